"""Compatibility AUC: the vectorised score equals a plain per-outfit loop (the original's)."""

import jax
import numpy as np
import pytest

from bilstm_jax.evaluation import compatibility
from bilstm_jax.evaluation import features as features_lib
from bilstm_jax.evaluation.predictor import Predictor, Rule, rule_from_config
from bilstm_jax.models.outfit_lstm import OutfitModel
from tests import _evaluation_world as world


def _log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _reference(model, variables, feats, lines):
  """xthan/polyvore fashion_compatibility.py: one outfit at a time, candidates = all items + END."""
  cands = np.concatenate([feats.rnn, np.zeros((1, feats.dim))]).astype(np.float64)
  end = len(feats)
  predict = jax.jit(lambda v, x: model.apply(v, x, np.array([x.shape[1]]), False,
                                             method=OutfitModel.predict))
  f_scores, b_scores = [], []
  for line in lines:
    seq = [feats.index[i] for i in line["items"]]
    fwd, bwd = (np.asarray(a[0], np.float64) for a in predict(variables, feats.rnn[seq][None]))
    f_targets = seq[1:] + [end]
    b_targets = [end] + seq[:-1]
    f_scores.append(np.mean([_log_softmax(cands @ fwd[t])[f_targets[t]] for t in range(len(seq))]))
    b_scores.append(np.mean([_log_softmax(cands @ bwd[t])[b_targets[t]] for t in range(len(seq))]))
  return np.array(f_scores), np.array(b_scores)


def test_fast_scores_equal_the_per_outfit_loop():
  config, model, variables, feats, outfits = world.trained()
  lines = world.compat_lines(outfits, seed=3)
  lines.append({"label": 1, "items": [outfits[0][0][0]]})  # a one-item outfit: END both ways
  prepared = compatibility.prepare(lines, feats)
  # Small budgets: several LSTM batches and lengths, and a partly padded last logits block.
  f, b = compatibility.lstm_scores(Predictor(model, variables), feats, prepared, max_rows=40,
                                   block=7)
  want_f, want_b = _reference(model, variables, feats, lines)
  np.testing.assert_allclose(f, want_f, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(b, want_b, rtol=1e-4, atol=1e-4)
  result = compatibility.evaluate(lines, feats, rule_from_config(config),
                                  Predictor(model, variables))
  np.testing.assert_allclose(result.scores, want_f + want_b, rtol=1e-4, atol=1e-4)
  forward = compatibility.evaluate(lines, feats, Rule("lstm", True, False, name="forward"),
                                   Predictor(model, variables))
  np.testing.assert_allclose(forward.scores, want_f, rtol=1e-4, atol=1e-4)
  backward = compatibility.evaluate(lines, feats, Rule("lstm", False, True, name="backward"),
                                    Predictor(model, variables))
  np.testing.assert_allclose(backward.scores, want_b, rtol=1e-4, atol=1e-4)


def test_trained_model_beats_chance():
  config, model, variables, feats, outfits = world.trained()
  result = compatibility.evaluate(world.compat_lines(outfits, seed=4), feats,
                                  rule_from_config(config), Predictor(model, variables))
  assert result.auc > 0.8, result.auc
  assert result.outfits == 2 * len(outfits) and result.num_skipped == 0


def test_constant_scorer_gets_half():
  _, _, _, feats, outfits = world.trained()
  lines = world.compat_lines(outfits, seed=4)
  labels = np.array([l["label"] for l in lines])
  assert compatibility.auc(labels, np.zeros(len(labels))) == 0.5
  same = features_lib.from_arrays(feats.ids, np.ones_like(feats.vse), np.ones_like(feats.rnn))
  result = compatibility.evaluate(lines, same, Rule("pairwise", embedding="vse", name="vse"))
  assert result.auc == pytest.approx(0.5)


def test_pairwise_score_is_mean_pairwise_cosine():
  _, _, _, feats, outfits = world.trained()
  lines = world.compat_lines(outfits, seed=5)[:20]
  result = compatibility.evaluate(lines, feats, Rule("pairwise", embedding="vse", name="siamese"))
  for line, got in zip(lines, result.scores):
    x = feats.vse[[feats.index[i] for i in line["items"]]].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    want = np.mean([x[i] @ x[j] for i in range(n) for j in range(n) if i != j])
    assert got == pytest.approx(want, abs=1e-9)


def test_bad_lines_are_skipped_and_counted():
  config, model, variables, feats, outfits = world.trained()
  lines = world.compat_lines(outfits, seed=6)[:6]
  lines += [{"label": 1, "items": ["nope_1", outfits[0][0][0]]}, {"label": 1, "items": []},
            {"label": 3, "items": [outfits[0][0][0]]}]
  result = compatibility.evaluate(lines, feats, rule_from_config(config),
                                  Predictor(model, variables))
  assert result.outfits == 6 and result.skipped == {"unknown_item": 1, "too_few_items": 1,
                                                    "label": 1}
  one_item = compatibility.evaluate([{"label": 1, "items": [outfits[0][0][0]]}], feats,
                                    Rule("pairwise", name="vse"))
  assert one_item.skipped["too_few_items"] == 1 and np.isnan(one_item.auc)
