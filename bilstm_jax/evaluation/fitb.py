"""Fill in the blank (han2017.md section 5), with the paper's rules and tie-aware accuracy.

Bi-LSTM rule (xthan/polyvore fill_in_blank.py): every LSTM run starts from a
zero state; the blank last -> forward over the question items; first ->
backward; in the middle -> forward over the items before the blank and backward
over the items after it, each a softmax over the 4 candidates' LSTM-space
embeddings, averaged. A model trained in one direction uses that direction; a
question it has no context for (blank first for a forward-only model) is a tie
of all candidates, counted as `no_context`.

VSE-only and Siamese rule (direction 0 / fill_in_blank_siamese.py): the cosine
between the normalised mean embedding of the question items and each
normalised candidate, mapped to [0, 1].

Ties: the files list the correct answer first, so a plain argmax credits every
tie to it. Here a question whose best score is shared by k candidates, the
right one among them, earns 1/k (top-n likewise: the expected value of a
random order among tied candidates).
"""

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bilstm_jax.evaluation import report
from bilstm_jax.evaluation.errors import EvaluationError
from bilstm_jax.evaluation.features import ItemFeatures
from bilstm_jax.evaluation.predictor import Predictor, Rule
from tfds_polyvore.protocols import NUM_CANDIDATES

TIE_TOLERANCE = 1e-6  # scores closer than this are equal (float32 noise of equal features)


def expected_hits(scores: np.ndarray, ks: Sequence[int], correct: int = 0,
                  tol: float = TIE_TOLERANCE) -> np.ndarray:
  """Per question, the chance that the correct candidate is in the top k, ties broken at random.

  Args:
    scores: [Q, K] candidate scores, higher is better.
    ks: the k of each top-k.
    correct: column of the correct candidate.
    tol: scores within `tol` of the correct one tie with it.

  Returns:
    [Q, len(ks)]: with g candidates strictly better and e tied (itself included),
    clip((k - g) / e, 0, 1).
  """
  scores = np.asarray(scores, np.float64)
  own = scores[:, correct:correct + 1]
  greater = np.sum(scores > own + tol, axis=1)
  equal = np.sum(np.abs(scores - own) <= tol, axis=1)
  ks = np.asarray(ks, np.float64)
  return np.clip((ks[None, :] - greater[:, None]) / equal[:, None], 0.0, 1.0)


@dataclasses.dataclass
class Questions:
  """FITB questions resolved to feature rows; the ones that cannot be scored are counted."""
  keys: list[str]  # position of each kept question in the input list, as a string
  context: np.ndarray  # [Q, T] feature rows of the question items, padded with row 0
  lengths: np.ndarray  # [Q] number of question items
  blank: np.ndarray  # [Q] 0-based position of the blank in the full outfit
  answers: np.ndarray  # [Q, K] feature rows of the candidates, the first correct
  answer_ids: np.ndarray  # [Q, K] their item ids
  skipped: dict[str, int]  # reason -> count


def prepare(questions: Sequence[dict], features: ItemFeatures,
            num_candidates: int = NUM_CANDIDATES) -> Questions:
  """Resolves questions ({question, answers, blank_position}) against `features`.

  Skipped and counted: an item without features (`unknown_item`), not exactly
  `num_candidates` candidates (`candidates`), no question items (`empty`), a
  blank position outside 1..len(question)+1 (`blank_position`).
  """
  skipped = {"unknown_item": 0, "candidates": 0, "empty": 0, "blank_position": 0}
  keys, context, lengths, blank, answers, answer_ids = [], [], [], [], [], []
  for n, q in enumerate(questions):
    items, cands, pos = list(q["question"]), list(q["answers"]), int(q["blank_position"])
    if len(cands) != num_candidates:
      skipped["candidates"] += 1
    elif not items:
      skipped["empty"] += 1
    elif not 1 <= pos <= len(items) + 1:
      skipped["blank_position"] += 1
    elif any(i not in features.index for i in items + cands):
      skipped["unknown_item"] += 1
    else:
      keys.append(str(n))
      context.append(features.rows(items))
      lengths.append(len(items))
      blank.append(pos - 1)
      answers.append(features.rows(cands))
      answer_ids.append(cands)
  t = max(lengths, default=1)
  padded = np.zeros((len(keys), t), np.int64)
  for r, c in enumerate(context):
    padded[r, :len(c)] = c
  return Questions(keys=keys, context=padded, lengths=np.array(lengths, np.int32),
                   blank=np.array(blank, np.int32),
                   answers=np.array(answers, np.int64).reshape(len(keys), num_candidates),
                   answer_ids=np.array(answer_ids, dtype=str).reshape(len(keys), num_candidates),
                   skipped=skipped)


def _softmax(logits: np.ndarray) -> np.ndarray:
  logits = logits.astype(np.float64)
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def lstm_scores(predictor: Predictor, features: ItemFeatures, q: Questions, rule: Rule,
                batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Bi-LSTM candidate scores [Q, K] and the questions without usable context [Q].

  One predict call per batch over the question items gives both directions:
  fwd at position blank-1 has read exactly the items before the blank, bwd at
  position blank exactly the items after it (the LSTMs only read one way).
  """
  num_q, k = q.answers.shape
  scores = np.full((num_q, k), 1.0 / k)
  no_context = np.zeros(num_q, bool)
  for start in range(0, num_q, batch_size):
    sl = slice(start, min(start + batch_size, num_q))
    lengths, blank = q.lengths[sl], q.blank[sl]
    mask = np.arange(q.context.shape[1])[None, :] < lengths[:, None]
    rnn = features.rnn[q.context[sl]] * mask[..., None]
    fwd, bwd = predictor(rnn, lengths)
    rows = np.arange(len(lengths))
    cands = features.rnn[q.answers[sl]]  # [B, K, E]
    has_f = np.full(len(rows), rule.forward) & (blank > 0)
    has_b = np.full(len(rows), rule.backward) & (blank < lengths)
    f = _softmax(np.einsum("be,bke->bk", fwd[rows, np.maximum(blank - 1, 0)], cands))
    b = _softmax(np.einsum("be,bke->bk", bwd[rows, np.minimum(blank, lengths - 1)], cands))
    n = (has_f.astype(np.float64) + has_b)[:, None]
    combined = (f * has_f[:, None] + b * has_b[:, None]) / np.maximum(n, 1)
    scores[sl] = np.where(n > 0, combined, 1.0 / k)
    no_context[sl] = n[:, 0] == 0
  return scores, no_context


def _normalize(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pairwise_scores(embedding: np.ndarray, q: Questions) -> np.ndarray:
  """VSE/Siamese scores [Q, K]: (cos(mean of question items, candidate) + 1) / 2."""
  mask = np.arange(q.context.shape[1])[None, :] < q.lengths[:, None]
  total = np.einsum("qt,qte->qe", mask.astype(np.float64), embedding[q.context].astype(np.float64))
  mean = _normalize(total / q.lengths[:, None])
  return (np.einsum("qe,qke->qk", mean, _normalize(embedding[q.answers])) + 1.0) / 2.0


@dataclasses.dataclass
class FitbResult:
  """Accuracy (tie-aware), top-k, the per-question scores and what was left out."""
  accuracy: float
  top_k: dict[int, float]  # k -> expected top-k accuracy, k = 1..K
  questions: int  # scored questions
  skipped: dict[str, int]  # reason -> questions not scored
  no_context: int  # scored as a full tie: the model's direction had nothing to read
  keys: list[str]
  scores: np.ndarray  # [Q, K]
  answer_ids: np.ndarray  # [Q, K]

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())

  def save(self, path: str | os.PathLike, **meta: Any) -> None:
    """Per-question scores, for late fusion."""
    report.save_scores(path, task="fitb", keys=self.keys, scores=self.scores,
                       answer_ids=self.answer_ids, skipped=self.skipped, **meta)


def summarize(scores: np.ndarray, keys: list[str], answer_ids: np.ndarray,
              skipped: dict[str, int], no_context: int = 0) -> FitbResult:
  """Tie-aware accuracy and top-k of per-question scores (correct answer in column 0)."""
  k = scores.shape[1] if scores.ndim == 2 else NUM_CANDIDATES
  ks = list(range(1, k + 1))
  hits = expected_hits(scores, ks) if len(scores) else np.zeros((0, k))
  means = hits.mean(axis=0) if len(scores) else np.full(k, np.nan)
  return FitbResult(accuracy=float(means[0]), top_k={kk: float(m) for kk, m in zip(ks, means)},
                    questions=len(scores), skipped=dict(skipped), no_context=int(no_context),
                    keys=list(keys), scores=scores, answer_ids=answer_ids)


def evaluate(questions: Sequence[dict], features: ItemFeatures, rule: Rule,
             predictor: Predictor | None = None, batch_size: int = 256) -> FitbResult:
  """FITB over `questions` with the model's rule (a Predictor is needed for an LSTM rule)."""
  q = prepare(questions, features)
  if rule.uses_lstm:
    if predictor is None:
      raise EvaluationError("an LSTM scoring rule needs the model's Predictor")
    scores, no_context = lstm_scores(predictor, features, q, rule, batch_size)
  else:
    scores = pairwise_scores(getattr(features, rule.embedding), q)
    no_context = np.zeros(len(scores), bool)
  return summarize(scores, q.keys, q.answer_ids, q.skipped, int(no_context.sum()))

