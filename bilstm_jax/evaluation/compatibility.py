"""Compatibility AUC (han2017.md section 5), exact and vectorised.

Bi-LSTM score (xthan/polyvore fashion_compatibility.py): the candidates are
the LSTM-space embeddings of ALL items of the split plus one zero row (END).
Forward: at each step the logits are prediction . candidates and the target is
the next item (END after the last); f_score = -mean cross-entropy over the
steps. Backward likewise on the reversed outfit; score = f_score + b_score
(a one-direction model uses its direction). The original loops over outfits in
Python; here the LSTM runs on batches of outfits sorted by length, and the
real prediction rows of all outfits and both directions go through one
compiled [block, E] x [E, N+1] log-sum-exp (bench/evaluation.py measures both).

VSE-only / Siamese score: the mean cosine over all pairs of the outfit's items.
"""

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import metrics as sk_metrics

from bilstm_jax.evaluation import report
from bilstm_jax.evaluation.errors import EvaluationError
from bilstm_jax.evaluation.features import ItemFeatures
from bilstm_jax.evaluation.predictor import Predictor, Rule


@dataclasses.dataclass
class Outfits:
  """Compatibility lines resolved to feature rows; unusable lines are counted."""
  keys: list[str]  # position of each kept line in the input list, as a string
  rows: list[np.ndarray]  # feature rows of each outfit's items, in order
  labels: np.ndarray  # [L] 1 = compatible, 0 = not
  skipped: dict[str, int]


def prepare(lines: Sequence[dict], features: ItemFeatures, min_items: int = 1) -> Outfits:
  """Resolves lines ({label, items}) against `features`.

  Skipped and counted: an item without features (`unknown_item`), fewer than
  `min_items` items (`too_few_items`), a label other than 0/1 (`label`).
  """
  skipped = {"unknown_item": 0, "too_few_items": 0, "label": 0}
  keys, rows, labels = [], [], []
  for n, line in enumerate(lines):
    items = list(line["items"])
    if int(line["label"]) not in (0, 1):
      skipped["label"] += 1
    elif len(items) < min_items:
      skipped["too_few_items"] += 1
    elif any(i not in features.index for i in items):
      skipped["unknown_item"] += 1
    else:
      keys.append(str(n))
      rows.append(features.rows(items))
      labels.append(int(line["label"]))
  return Outfits(keys=keys, rows=rows, labels=np.array(labels, np.int32), skipped=skipped)


@functools.partial(jax.jit, static_argnames=("apply",))
def _predict(variables: Any, cands: jax.Array, idx: jax.Array, lengths: jax.Array, *,
             apply) -> tuple[jax.Array, jax.Array]:
  return apply(variables, cands[idx], lengths)  # padding indexes END: a zero input


@jax.jit
def _cross_entropy(preds: jax.Array, targets: jax.Array, cands: jax.Array) -> jax.Array:
  """-log softmax(preds . cands^T)[targets] per row; the target's logit as a row dot."""
  logits = jnp.dot(preds, cands.T, precision=jax.lax.Precision.HIGHEST)
  own = jnp.sum(preds * cands[targets], axis=-1)
  return jax.nn.logsumexp(logits, axis=-1) - own


def lstm_scores(predictor: Predictor, features: ItemFeatures, outfits: Outfits,
                forward: bool = True, backward: bool = True, max_rows: int = 4096,
                block: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """(f_score, b_score) per outfit; a direction not asked for is 0.

  First the LSTM's predictions for every outfit (batches of outfits sorted by
  length, so padding costs little), then the cross-entropies of only the real
  (outfit, step, direction) rows, `block` rows per call: a [block, N+1] logits
  matrix at a time, one compiled shape.

  Args:
    predictor: the model's predictions.
    features: the candidate set: every item of the split (END is added here).
    outfits: prepared lines (their items are rows of `features`).
    forward, backward: directions to compute.
    max_rows: outfit positions per LSTM call.
    block: prediction rows per logits call; bounds the [block, N+1] logits in memory.
  """
  num = len(outfits.rows)
  if not num or not (forward or backward):
    return np.zeros(num, np.float32), np.zeros(num, np.float32)
  end = len(features)
  cands = jnp.asarray(np.concatenate([features.rnn, np.zeros((1, features.dim), np.float32)]))
  lengths = np.array([len(r) for r in outfits.rows], np.int32)
  order = np.argsort(lengths, kind="stable")
  directions = [d for d, wanted in ((True, forward), (False, backward)) if wanted]
  preds, targets, owners = [], [], []  # real rows only, over all batches and directions
  b = max(1, max_rows // int(lengths.max()))
  for start in range(0, num, b):
    sel = order[start:start + b]
    t = int(lengths[sel].max())
    idx = np.full((len(sel), t), end, np.int32)
    for r, o in enumerate(sel):
      idx[r, :lengths[o]] = outfits.rows[o]
    fwd, bwd = _predict(predictor.variables, cands, jnp.asarray(idx),
                        jnp.asarray(lengths[sel]), apply=predictor.apply)
    k = np.arange(t)[None, :]
    valid = k < lengths[sel][:, None]
    for is_forward in directions:
      # Forward: the next item, END after the last. Backward: the previous, END before the first.
      target = (np.where(k == lengths[sel][:, None] - 1, end, np.roll(idx, -1, axis=1))
                if is_forward else np.where(k == 0, end, np.roll(idx, 1, axis=1)))
      preds.append(np.asarray(fwd if is_forward else bwd)[valid])
      targets.append(target[valid])
      owners.append(np.broadcast_to(sel[:, None], valid.shape)[valid] * 2 + (not is_forward))
  preds, targets, owners = np.concatenate(preds), np.concatenate(targets), np.concatenate(owners)
  pad = -len(preds) % block
  preds = np.pad(preds, ((0, pad), (0, 0)))
  targets = np.pad(targets, (0, pad), constant_values=end)
  ce = np.concatenate([np.asarray(_cross_entropy(preds[i:i + block], targets[i:i + block], cands))
                       for i in range(0, len(preds), block)])[:len(owners)]
  totals = np.bincount(owners, weights=ce, minlength=2 * num).reshape(num, 2)
  f = np.where(forward, -totals[:, 0] / lengths, 0.0)
  bw = np.where(backward, -totals[:, 1] / lengths, 0.0)
  return f.astype(np.float32), bw.astype(np.float32)


def pairwise_scores(embedding: np.ndarray, outfits: Outfits, chunk: int = 1024) -> np.ndarray:
  """Mean cosine over all pairs of each outfit's items (needs >= 2 items)."""
  emb = embedding.astype(np.float64)
  emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
  out = np.zeros(len(outfits.rows))
  for start in range(0, len(outfits.rows), chunk):
    part = outfits.rows[start:start + chunk]
    t = max(len(r) for r in part)
    idx = np.zeros((len(part), t), np.int64)
    mask = np.zeros((len(part), t), bool)
    for r, rows in enumerate(part):
      idx[r, :len(rows)], mask[r, :len(rows)] = rows, True
    x = emb[idx] * mask[..., None]
    gram = np.einsum("bte,bse->bts", x, x)
    n = mask.sum(1).astype(np.float64)
    diag = np.einsum("btt->b", gram)
    out[start:start + len(part)] = (gram.sum((1, 2)) - diag) / (n * (n - 1))
  return out


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """ROC AUC (ties count 0.5); NaN when the lines hold only one class."""
  if len(set(np.asarray(labels).tolist())) < 2:
    return float("nan")
  return float(sk_metrics.roc_auc_score(labels, scores))


@dataclasses.dataclass
class CompatResult:
  auc: float
  outfits: int  # scored lines
  skipped: dict[str, int]
  keys: list[str]
  labels: np.ndarray
  scores: np.ndarray  # outfit scores, higher = more compatible

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())

  def save(self, path: str | os.PathLike, **meta: Any) -> None:
    """Per-outfit scores, for late fusion."""
    report.save_scores(path, task="compat", keys=self.keys, scores=self.scores,
                       labels=self.labels, skipped=self.skipped, **meta)


def evaluate(lines: Sequence[dict], features: ItemFeatures, rule: Rule,
             predictor: Predictor | None = None, max_rows: int = 4096) -> CompatResult:
  """Compatibility AUC over `lines` with the model's rule."""
  if rule.uses_lstm:
    if predictor is None:
      raise EvaluationError("an LSTM scoring rule needs the model's Predictor")
    outfits = prepare(lines, features)
    f, b = lstm_scores(predictor, features, outfits, rule.forward, rule.backward, max_rows)
    scores = f.astype(np.float64) + b
  else:
    outfits = prepare(lines, features, min_items=2)
    scores = pairwise_scores(getattr(features, rule.embedding), outfits)
  return CompatResult(auc=auc(outfits.labels, scores), outfits=len(outfits.keys),
                      skipped=outfits.skipped, keys=outfits.keys, labels=outfits.labels,
                      scores=scores)
