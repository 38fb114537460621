"""Scoring a user's own outfit images end to end, and completing a partial outfit.

The model reads an outfit as a sequence in the order its training outfits
listed their items: Polyvore's JSON order, roughly tops, bottoms, shoes, bags,
then accessories. Images can be given in any order: `order="category"` (the
default) sorts them into that order by the category of each image's nearest
catalogue item and the mean position of that category in the catalogue's
outfits; "best" tries every order (up to 7 items) and keeps the most compatible;
"given" keeps the order as given.

For each item, the catalogue (the test split's items) is searched for a better
fit at its position (the FITB rule over the whole catalogue); a partial outfit
is completed the same way at a blank.
"""

import dataclasses
import itertools
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from bilstm_jax.evaluation import compatibility
from bilstm_jax.evaluation.errors import EvaluationError, UnreadableImageError
from bilstm_jax.evaluation.features import ItemFeatures
from bilstm_jax.evaluation.predictor import Predictor, Rule

USER_PREFIX = "user:"  # ids of the user's items in the extended catalogue
MAX_BEST_ORDER_ITEMS = 7  # 5,040 orders


def load_images(paths: Sequence[str | os.PathLike], image_size: int) -> np.ndarray:
  """Image files -> float32 [n, S, S, 3] in [-1, 1], as the data pipeline prepares them."""
  if not paths:
    raise EvaluationError("No image files given")
  out = np.empty((len(paths), image_size, image_size, 3), np.float32)
  for k, path in enumerate(paths):
    try:
      with Image.open(path) as im:
        im = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError, ValueError) as e:
      raise UnreadableImageError(
          f"Cannot read the image {os.fspath(path)!r} ({type(e).__name__}: {e}); "
          "give JPEG or PNG files of single items.") from e
    out[k] = np.asarray(im, np.float32) / 127.5 - 1.0
  return out


def with_user_items(catalogue: ItemFeatures, vse: np.ndarray, rnn: np.ndarray) -> ItemFeatures:
  """The catalogue plus the user's items (ids user:0, user:1, ...) as extra rows."""
  n = len(vse)
  return ItemFeatures(
      ids=np.concatenate([catalogue.ids, np.array([f"{USER_PREFIX}{k}" for k in range(n)])]),
      vse=np.concatenate([catalogue.vse, np.asarray(vse, np.float32)]),
      rnn=np.concatenate([catalogue.rnn, np.asarray(rnn, np.float32)]),
      categories=np.concatenate([catalogue.categories, np.full(n, -1, np.int32)]),
      positions=np.concatenate([catalogue.positions, np.full(n, np.nan, np.float32)]))


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nearest_categories(catalogue: ItemFeatures, emb: np.ndarray, space: str) -> np.ndarray:
  """Category of each user item's nearest catalogue item (cosine in `space`)."""
  sims = _unit(emb) @ _unit(getattr(catalogue, space)).T
  return catalogue.categories[np.argmax(sims, axis=1)]


def category_order(catalogue: ItemFeatures, categories: np.ndarray) -> np.ndarray:
  """A permutation that sorts items by the mean outfit position of their category."""
  known = catalogue.categories >= 0
  if not known.any() or np.isnan(catalogue.positions[known]).all():
    raise EvaluationError("The catalogue has no categories or positions to order by; "
                          "give the images in outfit order and use order='given'.")
  keys = []
  for c in categories:
    pos = catalogue.positions[catalogue.categories == c]
    keys.append(float(np.nanmean(pos)) if len(pos) and not np.isnan(pos).all() else 0.5)
  return np.argsort(np.array(keys), kind="stable")


@dataclasses.dataclass
class ItemReport:
  index: int  # position in the scored order
  source: int  # position as given
  category: int  # category of the nearest catalogue item (-1 unknown)
  probability: float  # the model's probability of this item at its position
  rank: int  # its rank among the catalogue's items there (1 = best)
  better_id: str | None  # the best catalogue item there, if it beats this one
  better_probability: float


@dataclasses.dataclass
class OutfitScore:
  order: list[int]  # positions as given, in the scored order
  score: float  # f + b (Bi-LSTM) or mean pairwise cosine (VSE / Siamese)
  forward: float
  backward: float
  items: list[ItemReport]


def _outfit_scores(predictor: Predictor, ext: ItemFeatures, rule: Rule,
                   sequences: list[np.ndarray]) -> np.ndarray:
  outfits = compatibility.Outfits(keys=[str(k) for k in range(len(sequences))], rows=sequences,
                                  labels=np.zeros(len(sequences), np.int32), skipped={})
  f, b = compatibility.lstm_scores(predictor, ext, outfits, rule.forward, rule.backward)
  return np.stack([f, b], axis=1).astype(np.float64)


def blank_scores(predictor: Predictor, ext: ItemFeatures, rule: Rule, rows: Sequence[int],
                 blank: int, exclude: Sequence[int] = ()) -> np.ndarray:
  """FITB rule over the whole (extended) catalogue for a blank before rows[blank].

  rows are the outfit without the blank; returns probabilities [N] (the average
  of the available directions' softmaxes; `exclude` rows get 0).
  """
  rows = list(rows)
  if not rows:
    raise EvaluationError("A blank needs at least one other item of the outfit")
  x = ext.rnn[rows][None]
  fwd, bwd = predictor(x, np.array([len(rows)], np.int32))
  preds = []
  if rule.forward and blank > 0:
    preds.append(fwd[0, blank - 1])
  if rule.backward and blank < len(rows):
    preds.append(bwd[0, blank])
  if not preds:
    raise EvaluationError(f"This {rule.name} model has no context for a blank at position "
                          f"{blank + 1} of {len(rows) + 1}; choose another position.")
  keep = np.ones(len(ext), bool)
  keep[list(exclude)] = False
  total = np.zeros(len(ext))
  for p in preds:
    logits = ext.rnn.astype(np.float64) @ p.astype(np.float64)
    logits[~keep] = -np.inf
    e = np.exp(logits - logits.max())
    total += e / e.sum()
  return total / len(preds)


def score_outfit(predictor: Predictor | None, catalogue: ItemFeatures, rule: Rule,
                 vse: np.ndarray, rnn: np.ndarray, order: str = "category",
                 same_category: bool = True) -> OutfitScore:
  """Compatibility of the user's items and, per item, a better catalogue fit if there is one."""
  n = len(rnn)
  if n < 2:
    raise EvaluationError("Scoring an outfit needs at least 2 items")
  space = "rnn" if rule.uses_lstm else rule.embedding
  user_emb = rnn if space == "rnn" else vse
  cats = nearest_categories(catalogue, user_emb, space)
  if not rule.uses_lstm:
    emb = _unit(user_emb)
    sims = emb @ emb.T
    score = float((sims.sum() - np.trace(sims)) / (n * (n - 1)))
    return OutfitScore(order=list(range(n)), score=score, forward=0.0, backward=0.0,
                       items=[ItemReport(k, k, int(cats[k]), float("nan"), 0, None, float("nan"))
                              for k in range(n)])
  ext = with_user_items(catalogue, vse, rnn)
  user_rows = np.arange(len(catalogue), len(ext))
  if order == "given":
    perm = np.arange(n)
  elif order == "category":
    perm = category_order(catalogue, cats)
  elif order == "best":
    if n > MAX_BEST_ORDER_ITEMS:
      raise EvaluationError(f"order='best' tries every order, up to {MAX_BEST_ORDER_ITEMS} items; "
                            f"got {n}: use order='category'")
    perms = [np.array(p) for p in itertools.permutations(range(n))]
    fb = _outfit_scores(predictor, ext, rule, [user_rows[p] for p in perms])
    perm = perms[int(np.argmax(fb.sum(1)))]
  else:
    raise EvaluationError(f"order must be 'category', 'best' or 'given', got {order!r}")
  rows = user_rows[perm]
  f, b = _outfit_scores(predictor, ext, rule, [rows])[0]
  items = []
  for k in range(n):
    others = np.delete(rows, k)
    probs = blank_scores(predictor, ext, rule, others, k, exclude=others)
    own = probs[rows[k]]
    allowed = np.zeros(len(ext), bool)
    allowed[:len(catalogue)] = True
    if same_category and cats[perm[k]] >= 0:
      allowed[:len(catalogue)] = catalogue.categories == cats[perm[k]]
    alt = np.where(allowed, probs, -1.0)
    best = int(np.argmax(alt))
    rank = int(np.sum(probs[:len(catalogue)] > own)) + 1
    better = alt[best] > own * (1 + 1e-6)  # a tie (e.g. an untrained model) is no better fit
    items.append(ItemReport(index=k, source=int(perm[k]), category=int(cats[perm[k]]),
                            probability=float(own), rank=rank,
                            better_id=str(catalogue.ids[best]) if better else None,
                            better_probability=float(alt[best])))
  return OutfitScore(order=[int(p) for p in perm], score=float(f + b), forward=float(f),
                     backward=float(b), items=items)


def complete(predictor: Predictor, catalogue: ItemFeatures, rule: Rule, vse: np.ndarray,
             rnn: np.ndarray, blank: int | None = None, top: int = 5
             ) -> list[tuple[str, float]]:
  """Best catalogue items for a blank in the user's partial outfit (given order).

  `blank` is the 0-based position of the blank in the completed outfit (default:
  the end); returns the `top` (item id, probability) pairs.
  """
  if not rule.uses_lstm:
    raise EvaluationError(f"Completing an outfit over a catalogue needs the Bi-LSTM; this model "
                          f"({rule.name}) has none.")
  n = len(rnn)
  blank = n if blank is None else blank
  if not 0 <= blank <= n:
    raise EvaluationError(f"The blank position must be 1..{n + 1} (1-based), got {blank + 1}")
  ext = with_user_items(catalogue, vse, rnn)
  user_rows = np.arange(len(catalogue), len(ext))
  probs = blank_scores(predictor, ext, rule, user_rows, blank, exclude=user_rows)
  best = np.argsort(-probs[:len(catalogue)], kind="stable")[:top]
  return [(str(catalogue.ids[r]), float(probs[r])) for r in best]
