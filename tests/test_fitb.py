"""FITB: the paper's bidirectional rule against a plain per-question loop, ties, skips."""

import jax
import numpy as np
import pytest

from bilstm_jax.evaluation import features as features_lib
from bilstm_jax.evaluation import fitb
from bilstm_jax.evaluation.predictor import Predictor, Rule, rule_from_config
from bilstm_jax.models.outfit_lstm import OutfitModel
from tests import _evaluation_world as world


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


_JITTED = {}


def _predict(model):
  """One unpadded sequence at a time (jitted per length)."""
  if id(model) not in _JITTED:
    _JITTED[id(model)] = jax.jit(lambda v, x: model.apply(
        v, x, np.array([x.shape[1]]), False, method=OutfitModel.predict))
  return _JITTED[id(model)]


def _reference_lstm(model, variables, feats, question, forward=True, backward=True):
  """xthan/polyvore fill_in_blank.py, one question at a time, no padding."""
  rows = [feats.index[i] for i in question["question"]]
  cands = feats.rnn[[feats.index[a] for a in question["answers"]]].astype(np.float64)
  p = question["blank_position"]
  run = lambda seq: [np.asarray(a[0], np.float64)
                     for a in _predict(model)(variables, feats.rnn[seq][None])]
  parts = []
  if forward and p > 1:
    parts.append(_softmax(cands @ run(rows[:p - 1])[0][-1]))  # forward over the items before
  if backward and p <= len(rows):
    parts.append(_softmax(cands @ run(rows[p - 1:])[1][0]))  # backward over the items after
  return np.mean(parts, axis=0) if parts else np.full(4, 0.25)


def test_expected_hits_ties():
  scores = np.array([[0.25, 0.25, 0.25, 0.25],   # constant scorer: 1/4, 2/4, 3/4, 1
                     [0.9, 0.05, 0.03, 0.02],    # a clear win
                     [0.4, 0.4, 0.1, 0.1],       # a two-way tie for first
                     [0.3, 0.4, 0.3, 0.0],       # second, tied with another
                     [0.0, 0.5, 0.3, 0.2]])      # last
  hits = fitb.expected_hits(scores, [1, 2, 3, 4])
  np.testing.assert_allclose(hits, [[0.25, 0.5, 0.75, 1], [1, 1, 1, 1], [0.5, 1, 1, 1],
                                    [0, 0.5, 1, 1], [0, 0, 0, 1]])


def test_constant_scorer_gets_a_quarter():
  """Identical candidate features make every rule tie: 25%, never 100% (answer listed first)."""
  config, model, variables, feats, outfits = world.trained()
  same = features_lib.from_arrays(feats.ids, np.ones_like(feats.vse), np.ones_like(feats.rnn))
  questions = world.fitb_questions(outfits, seed=5)
  for rule, predictor in ((rule_from_config(config), Predictor(model, variables)),
                          (Rule("pairwise", embedding="vse", name="vse"), None)):
    result = fitb.evaluate(questions, same, rule, predictor)
    assert result.accuracy == pytest.approx(0.25)
    assert [result.top_k[k] for k in (2, 3, 4)] == pytest.approx([0.5, 0.75, 1.0])


@pytest.mark.parametrize("rule", [Rule("lstm", True, True), Rule("lstm", True, False, name="forward"),
                                  Rule("lstm", False, True, name="backward")], ids=lambda r: r.name)
def test_lstm_rule_matches_per_question_loop(rule):
  _, model, variables, feats, outfits = world.trained()
  questions = world.fitb_questions(outfits, seed=6)
  questions[0] = {**questions[0], "blank_position": 1}  # first, last and middle blanks all occur
  questions[1] = {**questions[1], "blank_position": len(questions[1]["question"]) + 1}
  result = fitb.evaluate(questions, feats, rule, Predictor(model, variables), batch_size=16)
  want = np.stack([_reference_lstm(model, variables, feats, q, rule.forward, rule.backward)
                   for q in questions])
  np.testing.assert_allclose(result.scores, want, atol=1e-5)
  no_context = sum((not rule.forward and q["blank_position"] == len(q["question"]) + 1) or
                   (not rule.backward and q["blank_position"] == 1) for q in questions)
  assert result.no_context == no_context and (no_context > 0) == (rule.name != "bilstm")


def test_rule_follows_the_trained_directions():
  assert rule_from_config(world.load_config("tiny")) == Rule("lstm", True, True)
  assert rule_from_config(world.load_config("tiny,forward_only")) == Rule(
      "lstm", True, False, name="forward")
  assert rule_from_config(world.load_config("tiny,vse_only")).name == "vse"
  siamese = rule_from_config(world.load_config("tiny,siamese"))
  assert siamese.kind == "pairwise" and siamese.name == "siamese"


def test_vse_rule_is_cosine_to_mean_of_question():
  _, _, _, feats, outfits = world.trained()
  questions = world.fitb_questions(outfits, seed=7)
  result = fitb.evaluate(questions, feats, Rule("pairwise", embedding="vse", name="vse"))
  for q, got in zip(questions, result.scores):
    mean = feats.vse[[feats.index[i] for i in q["question"]]].astype(np.float64).mean(0)
    mean /= np.linalg.norm(mean)
    cands = feats.vse[[feats.index[a] for a in q["answers"]]].astype(np.float64)
    cands /= np.linalg.norm(cands, axis=1, keepdims=True)
    np.testing.assert_allclose(got, (cands @ mean + 1) / 2, atol=1e-6)


def test_trained_model_beats_chance():
  config, model, variables, feats, outfits = world.trained()
  result = fitb.evaluate(world.fitb_questions(outfits, seed=8), feats, rule_from_config(config),
                         Predictor(model, variables))
  assert result.accuracy > 0.6, result.accuracy  # chance: 0.25
  tops = [result.accuracy] + [result.top_k[k] for k in (2, 3, 4)]
  assert tops == sorted(tops) and tops[-1] == 1.0


def test_bad_questions_are_skipped_and_counted():
  config, model, variables, feats, outfits = world.trained()
  good = world.fitb_questions(outfits, seed=9)[:5]
  bad = [{**good[0], "question": good[0]["question"] + ["no_such_item"]},
         {**good[1], "answers": good[1]["answers"][:3]},
         {**good[2], "blank_position": 0},
         {**good[3], "blank_position": len(good[3]["question"]) + 2},
         {"question": [], "answers": good[4]["answers"], "blank_position": 1}]
  result = fitb.evaluate(good + bad, feats, rule_from_config(config), Predictor(model, variables))
  assert result.questions == 5 and result.keys == ["0", "1", "2", "3", "4"]
  assert result.skipped == {"unknown_item": 1, "candidates": 1, "empty": 1, "blank_position": 2}
  empty = fitb.evaluate([], feats, rule_from_config(config), Predictor(model, variables))
  assert empty.questions == 0 and np.isnan(empty.accuracy)
