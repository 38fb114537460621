"""Outfit generation (han2017.md section 5; xthan/polyvore set_generation.py) and PNG strips.

From one query item: greedy decoding forward and backward over all items of the
catalogue plus END, at most `max_steps` a direction, stopping at END.
From several: each later query takes the position of its nearest neighbour (cosine in the
LSTM space) in the first query's outfit; the gap between consecutive queries
is filled (a greedy forward chain from the left query and a backward chain from
the right one, their predictions summed per blank, the best item taken); then
the outfit is extended both ways again.
With a text query: each generated (non-query) item is replaced by the catalogue
item nearest to its own normalised VSE embedding + text_weight x the text vector.

The original's stopping rule is kept: END is the best next item, or P(END)
exceeds `end_threshold` (config.eval.end_threshold: 1e-5 in set_generation.py,
for a catalogue of ~15k items; None stops at END only). Departures: an item is not repeated within an outfit
(`allow_repeats`; the original could repeat), and several queries are ordered
by their positions (the original filled between the first two only, whatever
their order).
"""

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from etils import epath
from PIL import Image, ImageDraw

from bilstm_jax.evaluation import report
from bilstm_jax.evaluation.errors import EvaluationError, NotSupportedError
from bilstm_jax.evaluation.features import ItemFeatures
from bilstm_jax.evaluation.predictor import Predictor, Rule

TILE = 128  # strip height and tile width, pixels
QUERY_FRAME = (220, 30, 30)  # the frame that marks query items
FRAME_WIDTH = 5


@dataclasses.dataclass
class Generated:
  ids: list[str]  # the outfit in order
  is_query: list[bool]
  text: str = ""
  before_text: list[str] = dataclasses.field(default_factory=list)  # ids before text re-ranking

  def to_json(self) -> dict[str, Any]:
    return {"items": self.ids, "query": [i for i, q in zip(self.ids, self.is_query) if q],
            "is_query": self.is_query, "text": self.text, "before_text": self.before_text}


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))


class Generator:
  """Greedy Bi-LSTM decoding over a catalogue of items (one outfit at a time)."""

  def __init__(self, predictor: Predictor, features: ItemFeatures, rule: Rule,
               max_steps: int = 10, end_threshold: float | None = None,
               allow_repeats: bool = False):
    if not rule.uses_lstm:
      raise NotSupportedError(
          f"Outfit generation decodes with the Bi-LSTM; this model ({rule.name}) has none. "
          "Generate with a model trained with an LSTM loss (forward_weight or backward_weight > 0).")
    if len(features) == 0:
      raise EvaluationError("Outfit generation needs a catalogue with at least one item")
    self.predictor, self.features, self.rule = predictor, features, rule
    self.max_steps, self.end_threshold, self.allow_repeats = max_steps, end_threshold, allow_repeats
    self.end = len(features)
    self.cands = np.concatenate([features.rnn, np.zeros((1, features.dim), np.float32)]
                                ).astype(np.float64)

  def _predict(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(fwd, bwd) [len, E] of one sequence; padded to a multiple of 16 to bound recompiles."""
    t = -(-len(rows) // 16) * 16
    x = np.zeros((1, t, self.features.dim), np.float32)
    x[0, :len(rows)] = self.features.rnn[list(rows)]
    fwd, bwd = self.predictor(x, np.array([len(rows)], np.int32))
    return fwd[0, :len(rows)].astype(np.float64), bwd[0, :len(rows)].astype(np.float64)

  def _scores(self, pred: np.ndarray, used: Sequence[int], allow_end: bool) -> np.ndarray:
    """Log-probabilities over catalogue + END, used items (and END if not allowed) removed."""
    logits = self.cands @ pred
    if not self.allow_repeats:
      logits[list(used)] = -np.inf
    if not allow_end:
      logits[self.end] = -np.inf
    return _log_softmax(logits)

  def extend(self, rows: list[int], direction: str, used: Sequence[int] = ()) -> list[int]:
    """Greedy decoding from `rows` to END: the new items, in outfit order.

    `used` items (e.g. those the other direction added) are not picked again.
    """
    if not getattr(self.rule, direction):
      return []
    seq, new = list(rows), []
    for _ in range(self.max_steps):
      fwd, bwd = self._predict(seq)
      pred = fwd[-1] if direction == "forward" else bwd[0]
      logp = self._scores(pred, seq + list(used), allow_end=True)
      nxt = int(np.argmax(logp))
      if nxt == self.end or (self.end_threshold is not None
                             and np.exp(logp[self.end]) > self.end_threshold):
        break
      new.append(nxt)
      seq = seq + [nxt] if direction == "forward" else [nxt] + seq
    return new if direction == "forward" else new[::-1]

  def _chain(self, start: int, num: int, direction: str, used: set[int]) -> list[np.ndarray]:
    """Predictions of a greedy chain of `num` steps from one item (no END)."""
    seq, preds = [start], []
    for _ in range(num):
      fwd, bwd = self._predict(seq)
      pred = fwd[-1] if direction == "forward" else bwd[0]
      preds.append(pred)
      nxt = int(np.argmax(self._scores(pred, used | set(seq), allow_end=False)))
      seq = seq + [nxt] if direction == "forward" else [nxt] + seq
    return preds if direction == "forward" else preds[::-1]

  def fill(self, left: int, right: int, num_blank: int, used: set[int]) -> list[int]:
    """The items between `left` and `right`: forward and backward chains, summed per blank."""
    if num_blank <= 0:
      return []
    total = np.zeros((num_blank, self.features.dim))
    if self.rule.forward:
      total += np.stack(self._chain(left, num_blank, "forward", used))
    if self.rule.backward:
      total += np.stack(self._chain(right, num_blank, "backward", used))
    picks: list[int] = []
    for pred in total:
      picks.append(int(np.argmax(self._scores(pred, used | set(picks), allow_end=False))))
    return picks

  def generate(self, query_ids: Sequence[str], text_vector: np.ndarray | None = None,
               text_weight: float = 2.0, text: str = "") -> Generated:
    """An outfit around the query items (catalogue ids), optionally re-ranked by a text vector."""
    if not query_ids:
      raise EvaluationError("Outfit generation needs at least one query item id")
    if len(set(query_ids)) != len(query_ids):
      raise EvaluationError(f"Query items repeat: {list(query_ids)}")
    queries = [int(r) for r in self.features.rows(query_ids)]
    before = self.extend([queries[0]], "backward", used=queries[1:])
    first = before + [queries[0]] + self.extend([queries[0]], "forward", used=before + queries[1:])
    first_pos = len(before)
    if len(queries) == 1:
      core = first
    else:
      unit = self.features.rnn / np.maximum(
          np.linalg.norm(self.features.rnn, axis=1, keepdims=True), 1e-12)
      positions = [first_pos] + [int(np.argmax(unit[first] @ unit[q])) for q in queries[1:]]
      anchors = sorted(zip(positions, range(len(queries))))
      core = [queries[anchors[0][1]]]
      for (p0, _), (p1, j) in zip(anchors, anchors[1:]):
        core += self.fill(core[-1], queries[j], p1 - p0 - 1, set(core) | set(queries))
        core.append(queries[j])
      before = self.extend(core, "backward")
      core = before + core + self.extend(core, "forward", used=before)
    ids = [str(self.features.ids[r]) for r in core]
    qset = set(queries)
    out = Generated(ids=ids, is_query=[r in qset for r in core], text=text, before_text=list(ids))
    if text_vector is not None:
      out.ids = self.rerank(core, qset, text_vector, text_weight)
    return out

  def rerank(self, rows: list[int], queries: set[int], text_vector: np.ndarray,
             text_weight: float) -> list[str]:
    """Each non-query item -> the item nearest to its normalised VSE vector + w x text."""
    vse = self.features.vse.astype(np.float64)
    vse /= np.maximum(np.linalg.norm(vse, axis=1, keepdims=True), 1e-12)
    out = list(rows)
    for k, r in enumerate(rows):
      if r in queries:
        continue
      score = vse @ (vse[r] + text_weight * np.asarray(text_vector, np.float64))
      if not self.allow_repeats:
        score[[o for i, o in enumerate(out) if i != k]] = -np.inf
      out[k] = int(np.argmax(score))
    return [str(self.features.ids[r]) for r in out]


def text_vector(model: nn.Module, variables: Any, vocab: Any, text: str) -> np.ndarray:
  """The L2-normalised sum of the known words' vectors (unknown words are left out, as the
  original did); an error when no word of `text` is known."""
  ids = []
  for i in vocab.ids(text):
    if i != vocab.unk_id and i not in ids:  # the original looked words up as a set
      ids.append(i)
  if not ids:
    sample = ", ".join(vocab.words[:8])
    raise EvaluationError(f"No word of the text query {text!r} is in the vocabulary "
                          f"({len(vocab.words)} words, e.g. {sample}).")
  tokens = jnp.asarray([ids], jnp.int32)
  vec = model.apply(variables, tokens, method=type(model).encode_text)
  return np.asarray(vec[0], np.float32)


def _tile(image: Any, label: str, tile: int, is_query: bool) -> Image.Image:
  if image is None:
    im = Image.new("RGB", (tile, tile), (200, 200, 200))
  else:
    if not isinstance(image, Image.Image):
      arr = np.asarray(image, np.float32)
      if arr.min() < 0:  # model inputs are in [-1, 1]
        arr = (arr + 1.0) * 127.5
      image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    im = image.convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR)
  draw = ImageDraw.Draw(im)
  if label:
    draw.rectangle([0, tile - 13, tile, tile], fill=(255, 255, 255))
    draw.text((3, tile - 12), label[:22], fill=(0, 0, 0))
  if is_query:
    draw.rectangle([0, 0, tile - 1, tile - 1], outline=QUERY_FRAME, width=FRAME_WIDTH)
  return im


def render_strip(images: Sequence[Any], is_query: Sequence[bool],
                 labels: Sequence[str] | None = None, tile: int = TILE) -> Image.Image:
  """Tiles in order, `tile` px high, len(images) x tile wide; query tiles framed in red.

  An image is a PIL image, an array ([-1, 1] model input or 0..255) or None (grey tile).
  """
  if not images:
    raise EvaluationError("Nothing to draw: the outfit is empty")
  labels = list(labels) if labels is not None else [""] * len(images)
  strip = Image.new("RGB", (tile * len(images), tile), (255, 255, 255))
  for k, (image, q, label) in enumerate(zip(images, is_query, labels)):
    strip.paste(_tile(image, label, tile, q), (k * tile, 0))
  return strip


def save(out: Generated, path_prefix: str | os.PathLike,
         images: Callable[[list[str]], Sequence[Any]], tile: int = TILE) -> tuple[str, str]:
  """Writes <prefix>.png (the strip) and <prefix>.json (ids); returns both paths."""
  prefix = epath.Path(path_prefix)
  png, js = prefix.parent / f"{prefix.name}.png", prefix.parent / f"{prefix.name}.json"
  strip = render_strip(images(out.ids), out.is_query, out.ids, tile)
  report.write_atomically(png, lambda f: strip.save(f, format="PNG"))
  report.write_atomically(js, lambda f: json.dump(out.to_json(), f, indent=1), mode="w")
  return str(png), str(js)
