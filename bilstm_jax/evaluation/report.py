"""What an evaluation writes: report.json, the console table, per-question score files.

Every metric names its task, protocol (original: random negatives, Han et al.;
resampled: category-matched, Vasileva et al.) and data split, with the counts
of what was scored and skipped, so no number is read without its protocol.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from bilstm_jax.evaluation.errors import EvaluationError

REPORT_FILE = "report.json"
SCORES_DIR = "scores"


def scores_path(workdir: str | os.PathLike, task: str, protocol: str, split: str) -> epath.Path:
  """Where a workdir keeps the per-question scores of one task (read by fusion)."""
  return epath.Path(workdir) / SCORES_DIR / f"{task}_{protocol}_{split}.npz"


def write_atomically(path: str | os.PathLike, write: Any, mode: str = "wb") -> None:
  """Calls write(file) on a temporary file beside `path`, then renames it (local or gs://)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f"{path.name}.tmp"
  with tmp.open(mode) as f:
    write(f)
  tmp.replace(path)


def save_scores(path: str | os.PathLike, *, task: str, keys: Sequence[str], scores: np.ndarray,
                skipped: dict[str, int], **fields: Any) -> None:
  """Writes per-question (FITB) or per-outfit (compat) scores as .npz, atomically."""
  write_atomically(path, lambda f: np.savez(
      f, task=task, keys=np.array(list(keys), dtype=str), scores=np.asarray(scores),
      skipped=json.dumps(skipped), **fields))


def load_scores(path: str | os.PathLike) -> dict[str, Any]:
  """Reads what `save_scores` wrote; `skipped` comes back as a dict, scalars as Python values."""
  path = epath.Path(path)
  if not path.exists():
    raise EvaluationError(f"No score file {path}: evaluate that workdir first "
                          f"(python -m bilstm_jax.evaluation --workdir=... --task=fitb|compat)")
  with path.open("rb") as f, np.load(f, allow_pickle=False) as z:
    out = {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
  out["skipped"] = json.loads(out["skipped"])
  return out


def fitb_metric(result: Any, protocol: str, split: str) -> dict[str, Any]:
  """A report entry for a fitb.FitbResult."""
  return {"task": "fitb", "protocol": protocol, "split": split, "value": _num(result.accuracy),
          "questions": result.questions, "skipped": result.num_skipped,
          "skip_reasons": {k: v for k, v in result.skipped.items() if v},
          "no_context": result.no_context,
          "top_k": {str(k): _num(v) for k, v in result.top_k.items() if k > 1}}


def compat_metric(result: Any, protocol: str, split: str) -> dict[str, Any]:
  """A report entry for a compatibility.CompatResult."""
  return {"task": "compat_auc", "protocol": protocol, "split": split, "value": _num(result.auc),
          "outfits": result.outfits, "positives": int(np.sum(result.labels == 1)),
          "skipped": result.num_skipped,
          "skip_reasons": {k: v for k, v in result.skipped.items() if v}}


def _num(x: float) -> float | None:
  return None if x is None or np.isnan(x) else round(float(x), 6)


def report_path(workdir: str | os.PathLike) -> epath.Path:
  return epath.Path(workdir) / REPORT_FILE


def load_report(workdir: str | os.PathLike) -> dict[str, Any]:
  """A workdir's report.json."""
  path = report_path(workdir)
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise EvaluationError(f"Cannot read {path} ({type(e).__name__}: {e}); evaluate the workdir "
                          "first") from e


def write_report(path: str | os.PathLike, metrics: Sequence[dict[str, Any]],
                 **header: Any) -> dict[str, Any]:
  """Writes (merges into) a report.json at `path` and returns it.

  `header` holds config, workdir, data, checkpoint_step, model, ...; a metric
  replaces an existing one of the same (task, protocol, split), others stay, so
  single-task commands update the report instead of truncating it.
  """
  path = epath.Path(path)
  old: dict[str, Any] = {}
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except json.JSONDecodeError:
      old = {}  # a report cut off mid-write: rewrite it whole
  key = lambda m: (m["task"], m.get("protocol"), m.get("split"))
  merged = {key(m): m for m in old.get("metrics", [])}
  merged.update({key(m): m for m in metrics})
  out = {**{k: v for k, v in old.items() if k != "metrics"}, **header,
         "metrics": list(merged.values())}
  write_atomically(path, lambda f: json.dump(out, f, indent=1), mode="w")
  return out


_NAMES = {"fitb": "FITB", "compat_auc": "Compat AUC"}


def format_line(metric: dict[str, Any]) -> str:
  """`FITB (original, test): 61.0%` or `Compat AUC (resampled, test): 0.830`, then counts."""
  name = _NAMES.get(metric["task"], metric["task"])
  value = metric["value"]
  if value is None:
    shown = "n/a"
  elif metric["task"] == "fitb":
    shown = f"{100 * value:.1f}%"
  else:
    shown = f"{value:.3f}"
  counted = metric.get("questions", metric.get("outfits"))
  unit = "questions" if "questions" in metric else "outfits"
  extra = f"{counted} {unit}, {metric.get('skipped', 0)} skipped"
  if metric.get("no_context"):
    extra += f", {metric['no_context']} without context"
  if metric.get("top_k"):
    extra += ", " + ", ".join(f"top-{k} {100 * v:.1f}%" for k, v in metric["top_k"].items()
                              if v is not None)
  return f"{name} ({metric['protocol']}, {metric['split']}): {shown}  [{extra}]"


def format_table(metrics: Sequence[dict[str, Any]]) -> str:
  return "\n".join(format_line(m) for m in metrics)
