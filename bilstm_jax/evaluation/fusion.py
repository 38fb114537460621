r"""Late fusion: a weighted sum of several trained models' normalised scores, for FITB and AUC.

The authors report that fusing Bi-LSTM without VSE, VSE only and Siamese beats
each model alone (han2017.md section 6). Each workdir's evaluation saved its
per-question scores (workdir/scores/<task>_<protocol>_<split>.npz); questions
are matched by their position in the question file, and only those every
model scored are fused (the others are counted as skipped).

  python -m bilstm_jax.evaluation.fusion --workdirs=/tmp/no_vse,/tmp/vse_only,/tmp/siamese \
      [--weights=1,1,1] [--normalize=zscore|rank|none] --out=/tmp/fusion

Normalisation puts models on one scale before weighting: zscore (default)
subtracts each model's mean score on the task and divides by its standard
deviation; rank replaces scores by their average rank (ties stay ties).
"""

import glob
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags
from scipy import stats

from bilstm_jax.evaluation import compatibility, fitb, report
from bilstm_jax.evaluation.errors import ConfigMismatchError, EvaluationError

NORMALIZATIONS = ("zscore", "rank", "none")


def normalize(scores: np.ndarray, method: str) -> np.ndarray:
  """One model's scores on one task on a common scale (ties are kept)."""
  s = np.asarray(scores, np.float64)
  if method == "zscore":
    std = s.std()
    return (s - s.mean()) / std if std > 0 else np.zeros_like(s)
  if method == "rank":
    return (stats.rankdata(s.reshape(-1)).reshape(s.shape) - 1) / max(s.size - 1, 1)
  if method == "none":
    return s
  raise EvaluationError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {method!r}")


def _check_weights(weights: Sequence[float], n: int) -> np.ndarray:
  w = np.asarray(weights, np.float64)
  if len(w) != n:
    raise EvaluationError(f"{len(w)} weights for {n} workdirs; give one weight per workdir")
  if (w < 0).any() or not w.any():
    raise EvaluationError(f"weights must be >= 0 and not all 0, got {list(weights)}")
  return w


def fuse_saved(saved: Sequence[dict[str, Any]], weights: Sequence[float], method: str = "zscore"
               ) -> tuple[Any, dict[str, np.ndarray]]:
  """Fuses loaded score files of one task/protocol/split.

  Returns the fused result (fitb.FitbResult or compatibility.CompatResult) and
  the fused scores' fields (for saving).
  """
  w = _check_weights(weights, len(saved))
  task = saved[0]["task"]
  if any(s["task"] != task for s in saved):
    raise ConfigMismatchError("score files of different tasks cannot be fused")
  common = [k for k in saved[0]["keys"] if all(k in set(s["keys"]) for s in saved[1:])]
  at = [{k: i for i, k in enumerate(s["keys"])} for s in saved]
  aligned = [s["scores"][[a[k] for k in common]] for s, a in zip(saved, at)]
  check = "answer_ids" if task == "fitb" else "labels"
  ref = saved[0][check][[at[0][k] for k in common]]
  for s, a in zip(saved[1:], at[1:]):
    if not np.array_equal(s[check][[a[k] for k in common]], ref):
      raise ConfigMismatchError(f"The workdirs were evaluated on different {task} questions "
                                f"({check} differ); evaluate all on the same data and protocol.")
  fused = sum(wi * normalize(a, method) for wi, a in zip(w, aligned))
  total = max(len(s["keys"]) + sum(s["skipped"].values()) for s in saved)
  skipped = {"not_scored_by_all": total - len(common)}
  if task == "fitb":
    return fitb.summarize(fused, common, ref, skipped), {"answer_ids": ref}
  result = compatibility.CompatResult(auc=compatibility.auc(ref, fused), outfits=len(common),
                                      skipped=skipped, keys=common, labels=ref, scores=fused)
  return result, {"labels": ref}


def fuse(workdirs: Sequence[str], weights: Sequence[float] | None, out: str,
         method: str = "zscore") -> dict[str, Any]:
  """Fuses every task/protocol/split that all workdirs have scores for; writes out/report.json."""
  if len(workdirs) < 2:
    raise EvaluationError("Late fusion needs at least 2 workdirs")
  weights = [1.0] * len(workdirs) if weights is None else list(weights)
  _check_weights(weights, len(workdirs))
  names = []
  for wd in workdirs:
    files = {os.path.basename(p) for p in glob.glob(os.path.join(wd, report.SCORES_DIR, "*.npz"))}
    if not files:
      raise EvaluationError(f"{wd} has no {report.SCORES_DIR}/*.npz: evaluate it first "
                            f"(python -m bilstm_jax.evaluation --workdir={wd})")
    names.append(files)
  shared = sorted(set.intersection(*names))
  if not shared:
    raise EvaluationError("The workdirs share no evaluated task/protocol/split: " +
                          "; ".join(f"{wd}: {sorted(n)}" for wd, n in zip(workdirs, names)))
  metrics = []
  for name in shared:
    saved = [report.load_scores(os.path.join(wd, report.SCORES_DIR, name)) for wd in workdirs]
    protocol, split = saved[0]["protocol"], saved[0]["split"]
    result, fields = fuse_saved(saved, weights, method)
    entry = (report.fitb_metric if saved[0]["task"] == "fitb" else report.compat_metric)(
        result, protocol, split)
    metrics.append(entry)
    result.save(os.path.join(out, report.SCORES_DIR, name), protocol=protocol, split=split,
                rule="fusion")
  members = []
  for wd in workdirs:
    try:
      members.append(report.load_report(wd).get("model", {}))
    except EvaluationError:
      members.append({})
  header = {"workdir": os.fspath(out), "model": {"kind": "fusion", "members": members},
            "fusion": {"workdirs": list(workdirs), "weights": list(weights), "normalize": method}}
  rep = report.write_report(report.report_path(out), metrics, **header)
  print(report.format_table(metrics), flush=True)
  return rep


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  try:
    weights = None if f.weights is None else [float(w) for w in f.weights]
  except ValueError:
    sys.exit(f"error: --weights must be numbers, got {','.join(f.weights)}")
  try:
    fuse(f.workdirs, weights, f.out, f.normalize)
  except EvaluationError as e:
    sys.exit(f"error: {e}")


def _define_flags() -> None:
  """Flags of the command line only, so importing this module defines none."""
  flags.DEFINE_list("workdirs", None, "Evaluated workdirs to fuse.")
  flags.DEFINE_list("weights", None, "One weight per workdir (default: all 1).")
  flags.DEFINE_enum("normalize", "zscore", NORMALIZATIONS, "Score normalisation.")
  flags.DEFINE_string("out", None, "Where the fused report.json and scores go.")
  flags.mark_flags_as_required(["workdirs", "out"])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
