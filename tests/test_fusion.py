"""Late fusion of saved per-question scores: alignment, normalisation, the CLI's report."""

import json

import numpy as np
import pytest

from bilstm_jax.evaluation import compatibility, fitb, fusion, report
from bilstm_jax.evaluation.errors import ConfigMismatchError, EvaluationError
from bilstm_jax.evaluation.predictor import Predictor, Rule, rule_from_config
from tests import _evaluation_world as world


def _save_run(workdir, rule, predictor, feats, questions, lines):
  """What evaluate() leaves in a workdir, for one model."""
  meta = {"protocol": "original", "split": "test", "step": 1, "rule": rule.name}
  fitb.evaluate(questions, feats, rule, predictor).save(
      report.scores_path(workdir, "fitb", "original", "test"), **meta)
  compatibility.evaluate(lines, feats, rule, predictor).save(
      report.scores_path(workdir, "compat", "original", "test"), **meta)


def test_normalize_keeps_order_and_ties():
  s = np.array([[0.1, 0.1, 0.5, 0.3]])
  for method in fusion.NORMALIZATIONS:
    n = fusion.normalize(s, method)
    assert n[0, 0] == n[0, 1] and n[0, 2] > n[0, 3] > n[0, 0]
  assert np.all(fusion.normalize(np.full((2, 4), 0.25), "zscore") == 0)
  with pytest.raises(EvaluationError, match="normalize"):
    fusion.normalize(s, "softmax")


def test_fusion_end_to_end(tmp_path):
  config, model, variables, feats, outfits = world.trained()
  questions = world.fitb_questions(outfits, seed=11)
  lines = world.compat_lines(outfits, seed=12)
  lstm, vse = tmp_path / "bilstm", tmp_path / "vse"
  _save_run(lstm, rule_from_config(config), Predictor(model, variables), feats, questions, lines)
  # The VSE model misses one question's item: that question is left out of the fusion.
  short = [q for k, q in enumerate(questions) if k != 3]
  _save_run(vse, Rule("pairwise", name="vse"), None, feats, short[:3] + [
      {**questions[3], "question": ["gone_1"]}] + short[3:], lines)
  rep = fusion.fuse([str(lstm), str(vse)], [1.0, 0.0], str(tmp_path / "fused"))
  by_task = {m["task"]: m for m in rep["metrics"]}
  assert by_task["fitb"]["protocol"] == "original" and by_task["fitb"]["split"] == "test"
  assert by_task["fitb"]["questions"] == len(questions) - 1
  assert by_task["fitb"]["skip_reasons"] == {"not_scored_by_all": 1}
  # Weight 0 on the second model: the fusion is the first model alone (zscore keeps the ranking).
  alone = fitb.evaluate([q for k, q in enumerate(questions) if k != 3], feats,
                        rule_from_config(config), Predictor(model, variables))
  assert by_task["fitb"]["value"] == pytest.approx(alone.accuracy, abs=1e-6)
  single = compatibility.evaluate(lines, feats, rule_from_config(config),
                                  Predictor(model, variables))
  assert by_task["compat_auc"]["value"] == pytest.approx(single.auc, abs=1e-6)
  on_disk = json.loads((tmp_path / "fused" / "report.json").read_text())
  assert on_disk["fusion"]["weights"] == [1.0, 0.0] and len(on_disk["metrics"]) == 2
  assert (tmp_path / "fused" / "scores" / "fitb_original_test.npz").exists()
  # Equal weights of two models that rank alike stay far above chance.
  both = fusion.fuse([str(lstm), str(vse)], None, str(tmp_path / "fused2"), "rank")
  assert {m["task"]: m for m in both["metrics"]}["fitb"]["value"] > 0.4


def test_fusion_refuses_mismatched_runs(tmp_path):
  config, model, variables, feats, outfits = world.trained()
  questions = world.fitb_questions(outfits, seed=13)
  lines = world.compat_lines(outfits, seed=14)
  _save_run(tmp_path / "a", rule_from_config(config), Predictor(model, variables), feats,
            questions, lines)
  other = world.fitb_questions(outfits, seed=15)  # other candidates for the same keys
  _save_run(tmp_path / "b", Rule("pairwise", name="vse"), None, feats, other, lines)
  with pytest.raises(ConfigMismatchError, match="different fitb questions"):
    fusion.fuse([str(tmp_path / "a"), str(tmp_path / "b")], None, str(tmp_path / "out"))
  with pytest.raises(EvaluationError, match="one weight per workdir"):
    fusion.fuse([str(tmp_path / "a"), str(tmp_path / "b")], [1.0], str(tmp_path / "out"))
  with pytest.raises(EvaluationError, match="evaluate it first"):
    fusion.fuse([str(tmp_path / "a"), str(tmp_path / "empty")], None, str(tmp_path / "out"))
