r"""Runs a list of config variants (the paper's ablations by default) and tabulates them.

Each variant trains and evaluates in WORKDIR/<variant> (locally one after another, or as
SLURM jobs); then WORKDIR/ablations.md and WORKDIR/ablations.json compare their
report.json files, one row per variant and protocol.

  python launch/ablations.py --base=configs/bilstm.py:demo --workdir=/tmp/ablations
  python launch/ablations.py --base=configs/bilstm.py:tiny --workdir=/tmp/abl \
      --variants=full,no_vse
  python launch/ablations.py --base=configs/bilstm.py:gpu --workdir=/shared/ablations \
      --slurm --sbatch_args='--partition=gpu' -- --config.data.root=/shared/polyvore
  python launch/ablations.py --base=configs/bilstm.py:demo --workdir=/tmp/ablations \
      --collect          # only the fusion row and the table, from finished runs

Variants: `full` is the base config; an ablation name (no_vse, vse_only, forward_only,
backward_only, siamese) is appended to the base's variants; `fusion` is the authors'
late fusion of Bi-LSTM without VSE, VSE only and Siamese (bilstm_jax.evaluation.fusion
over those three workdirs). A variant whose report.json exists is not run again unless
--force. Flags after `--` go to every training run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

REPO_DIR = Path(__file__).resolve().parents[1]
SLURM_SCRIPT = REPO_DIR / "launch" / "slurm.sbatch"
FUSION = "fusion"
FUSION_MEMBERS = ("no_vse", "vse_only", "siamese")
FUSION_MODULE = "bilstm_jax.evaluation.fusion"
DEFAULT_VARIANTS = ("full", "no_vse", "vse_only", "forward_only", "backward_only", "siamese",
                    FUSION)
TABLE_NAME = "ablations"
# How each task's value is shown in the markdown table; others use 4 significant digits.
TASK_TITLES = {"fitb": "FITB", "compat_auc": "Compat AUC"}
TASK_FORMATS = {"fitb": "{:.1%}", "compat_auc": "{:.3f}"}


class AblationError(Exception):
  """Bad settings or inputs, reported without a traceback."""


def split_config(spec: str) -> tuple[str, list[str]]:
  """'file.py:a,b' -> ('file.py', ['a', 'b'])."""
  file, _, arg = spec.partition(":")
  return file, [a.strip() for a in arg.split(",") if a.strip()]


def variant_config(base: str, variant: str) -> str:
  """The --config value of a variant: the base's variants plus the ablation."""
  file, args = split_config(base)
  if variant != "full":
    args.append(variant)
  return f"{file}:{','.join(args)}" if args else file


def check_configs(base: str, variants: Sequence[str]) -> None:
  """Builds every variant's config, so a bad name fails before anything runs."""
  file, _ = split_config(base)
  path = REPO_DIR / file
  if not path.is_file():
    raise AblationError(f"--base: config file not found: {path.resolve()}")
  spec = importlib.util.spec_from_file_location("ablation_base_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for variant in variants:
    if variant == FUSION:
      continue
    try:
      module.get_config(",".join(split_config(variant_config(base, variant))[1]))
    except ValueError as e:
      raise AblationError(f"variant {variant!r}: {e}") from None


def normalize_base(base: str) -> str:
  """The base config with its file relative to the repository (where runs start), or absolute."""
  file, _, arg = base.partition(":")
  path = Path(file).expanduser().resolve()
  if path.is_relative_to(REPO_DIR):
    path = path.relative_to(REPO_DIR)
  return f"{path}:{arg}" if arg else str(path)


def parse_variants(text: str) -> list[str]:
  """The --variants list; fusion brings in the runs it fuses."""
  variants = [v.strip() for v in text.split(",") if v.strip()]
  if not variants:
    raise AblationError("--variants is empty")
  duplicates = sorted({v for v in variants if variants.count(v) > 1})
  if duplicates:
    raise AblationError(f"--variants names {', '.join(duplicates)} twice")
  if FUSION in variants:
    added = [m for m in FUSION_MEMBERS if m not in variants]
    if added:
      print(f"# fusion needs {', '.join(added)}: added to the variants", file=sys.stderr)
      at = variants.index(FUSION)
      variants[at:at] = added
  return variants


def show(command: Sequence[str]) -> None:
  print("+ " + shlex.join(command), flush=True)


def train_command(args: argparse.Namespace, variant: str) -> list[str]:
  return [args.python, "-m", "bilstm_jax.main",
          f"--config={variant_config(args.base, variant)}",
          f"--workdir={Path(args.workdir) / variant}", *args.trainer_args]


def fusion_command(args: argparse.Namespace) -> list[str]:
  workdirs = ",".join(str(Path(args.workdir) / m) for m in FUSION_MEMBERS)
  return [args.python, "-m", FUSION_MODULE, f"--workdirs={workdirs}",
          f"--out={Path(args.workdir) / FUSION}"]


def fusion_available(python: str) -> bool:
  """Whether the interpreter that runs the variants has the fusion module."""
  check = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({FUSION_MODULE!r}) is None)"
  return subprocess.run([python, "-c", check], check=False).returncode == 0


def report_path(workdir: str, variant: str) -> Path:
  return Path(workdir) / variant / "report.json"


def run_local(args: argparse.Namespace, variants: Sequence[str]) -> None:
  """Trains and evaluates each variant in turn, then fuses."""
  for variant in variants:
    if variant == FUSION:
      continue
    command = train_command(args, variant)
    if report_path(args.workdir, variant).exists() and not args.force:
      print(f"# {variant}: {report_path(args.workdir, variant)} exists, not run again "
            "(--force reruns)", flush=True)
      continue
    show(command)
    if not args.dry_run and subprocess.run(command, cwd=REPO_DIR, check=False).returncode != 0:
      raise AblationError(f"variant {variant!r} failed (workdir {Path(args.workdir) / variant}); "
                          "finished variants are kept: rerun the same command to go on")
  if FUSION in variants:
    run_fusion(args)


def run_fusion(args: argparse.Namespace) -> None:
  if report_path(args.workdir, FUSION).exists() and not args.force:
    print(f"# fusion: {report_path(args.workdir, FUSION)} exists, not run again", flush=True)
    return
  command = fusion_command(args)
  show(command)
  if not args.dry_run and subprocess.run(command, cwd=REPO_DIR, check=False).returncode != 0:
    raise AblationError("late fusion failed (see its output above)")


def run_slurm(args: argparse.Namespace, variants: Sequence[str]) -> None:
  """Submits one job per variant, then a job that fuses and tabulates when all succeed."""
  sbatch = ["sbatch", "--parsable", f"--export=ALL,BILSTM_REPO={REPO_DIR}",
            *shlex.split(args.sbatch_args)]
  job_ids = []
  for variant in variants:
    if variant == FUSION:
      continue
    workdir = Path(args.workdir) / variant
    if report_path(args.workdir, variant).exists() and not args.force:
      print(f"# {variant}: {report_path(args.workdir, variant)} exists, not submitted again "
            "(--force resubmits)", flush=True)
      continue
    command = [*sbatch, f"--job-name=bilstm-{variant}", f"--output={workdir}/slurm-%j.out",
               str(SLURM_SCRIPT), f"--config={variant_config(args.base, variant)}",
               f"--workdir={workdir}", f"--python={args.python}", "--", *args.trainer_args]
    show(command)
    if args.dry_run:
      job_ids.append(f"JOB_{variant}")
      continue
    workdir.mkdir(parents=True, exist_ok=True)  # SLURM does not create the --output folder
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
      raise AblationError(f"sbatch failed for {variant!r}: {result.stderr.strip()}")
    job_ids.append(result.stdout.strip().split(";")[0])
  collect = [args.python, str(Path(__file__).resolve()), f"--base={args.base}",
             f"--workdir={args.workdir}", f"--variants={','.join(variants)}", "--collect",
             f"--python={args.python}"]
  resources = ["--nodes=1", "--ntasks=1"] + (["--gpus-per-node=1"] if FUSION in variants else [])
  dependency = [f"--dependency=afterok:{':'.join(job_ids)}"] if job_ids else []
  command = [*sbatch, *dependency, "--job-name=bilstm-ablations", f"--output={Path(args.workdir)}/ablations-%j.out",
             *resources, f"--wrap={shlex.join(collect)}"]
  show(command)
  if not args.dry_run:
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    subprocess.run(command, check=True)
    print(f"# the table will be in {Path(args.workdir) / (TABLE_NAME + '.md')}")


def _step_text(step: Any) -> str:
  if step is None:
    return "-"
  if isinstance(step, dict):
    return ", ".join(f"{k}: {v}" for k, v in step.items())
  if isinstance(step, (list, tuple)):
    return "/".join(str(s) for s in step)
  return str(step)


def _value_text(metric: dict) -> str:
  value = metric["value"]
  text = TASK_FORMATS.get(metric["task"], "{:.4g}").format(value)
  if metric.get("skipped"):
    text += f" ({metric['skipped']} skipped)"
  return text


HEADER_KEYS = ("config", "data", "checkpoint_step")


def read_report(path: Path, header: bool = True) -> dict:
  """A report.json, checked for the keys the table uses (`header`: config, data, step)."""
  try:
    report = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise AblationError(f"{path}: not valid JSON ({e})") from None
  for key in (*HEADER_KEYS, "metrics") if header else ("metrics",):
    if key not in report:
      raise AblationError(f"{path}: no {key!r} key, which bilstm_jax.main's report.json "
                          "has (config: the --config value as given)")
  for i, metric in enumerate(report["metrics"]):
    for key in ("task", "protocol", "split", "value"):
      if key not in metric:
        raise AblationError(f"{path}: metrics[{i}] has no {key!r} key")
  return report


def read_fusion_report(workdir: str) -> dict:
  """The fusion report, its config, data and steps taken from the runs it fuses if absent."""
  report = read_report(report_path(workdir, FUSION), header=False)
  members = [read_report(report_path(workdir, m)) for m in FUSION_MEMBERS]
  data = {m["data"] for m in members}
  if len(data) != 1:
    raise AblationError(f"the fused runs {', '.join(FUSION_MEMBERS)} used different data: "
                        f"{sorted(data)}")
  composed = {"config": "late fusion of " + ", ".join(m["config"] for m in members),
              "data": data.pop(), "checkpoint_step": [m["checkpoint_step"] for m in members]}
  return {**composed, **report}


def build_table(workdir: str, variants: Sequence[str]) -> tuple[str, dict]:
  """The comparison as markdown and as JSON-able data; missing reports are listed."""
  rows, missing, tasks = [], [], []
  for variant in variants:
    path = report_path(workdir, variant)
    if not path.exists():
      missing.append({"variant": variant, "report": str(path)})
      continue
    report = read_fusion_report(workdir) if variant == FUSION else read_report(path)
    groups: dict[tuple[str, str], dict] = {}
    for metric in report["metrics"]:
      if metric["task"] not in tasks:
        tasks.append(metric["task"])
      row = groups.setdefault((metric["protocol"], metric["split"]), {
          "variant": variant, "config": report["config"], "data": report["data"],
          "protocol": metric["protocol"], "split": metric["split"],
          "checkpoint_step": report["checkpoint_step"], "report": str(path), "metrics": {}})
      row["metrics"][metric["task"]] = metric
    rows.extend(groups.values())

  header = ["Variant", "Config", "Data", "Protocol", "Split", "Step",
            *(TASK_TITLES.get(t, t) for t in tasks)]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["variant"], f"`{row['config']}`", row["data"], row["protocol"], row["split"],
             _step_text(row["checkpoint_step"]),
             *(_value_text(row["metrics"][t]) if t in row["metrics"] else "-" for t in tasks)]
    lines.append("| " + " | ".join(str(c) for c in cells) + " |")
  for entry in missing:
    lines.append("| " + " | ".join([entry["variant"], "missing: no report.json"] +
                                   ["-"] * (len(header) - 2)) + " |")
  markdown = "\n".join(lines) + "\n"
  return markdown, {"workdir": str(workdir), "variants": list(variants), "tasks": tasks,
                    "rows": rows, "missing": missing}


def write_table(workdir: str, variants: Sequence[str]) -> int:
  """Writes WORKDIR/ablations.{md,json}; returns 1 when some report is missing."""
  markdown, data = build_table(workdir, variants)
  Path(workdir).mkdir(parents=True, exist_ok=True)
  (Path(workdir) / f"{TABLE_NAME}.md").write_text(markdown)
  (Path(workdir) / f"{TABLE_NAME}.json").write_text(json.dumps(data, indent=2) + "\n")
  print(markdown, end="")
  print(f"# wrote {Path(workdir) / TABLE_NAME}.md and .json")
  if data["missing"]:
    names = ", ".join(m["variant"] for m in data["missing"])
    print(f"# {len(data['missing'])} variant(s) without report.json: {names}", file=sys.stderr)
    return 1
  return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  argv = list(argv)
  trainer_args = []
  if "--" in argv:
    split = argv.index("--")
    argv, trainer_args = argv[:split], argv[split + 1:]
  parser = argparse.ArgumentParser(
      prog="launch/ablations.py", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--base", required=True,
                      help="config file[:variants] every variant starts from, e.g. "
                           "configs/bilstm.py:demo")
  parser.add_argument("--workdir", required=True, help="each variant runs in WORKDIR/<variant>")
  parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                      help="comma-separated; default: %(default)s")
  parser.add_argument("--slurm", action="store_true",
                      help="submit the variants as SLURM jobs (launch/slurm.sbatch) instead "
                           "of running them here")
  parser.add_argument("--sbatch_args", default="",
                      help="extra sbatch options for every job, e.g. '--partition=gpu'")
  parser.add_argument("--python", default=sys.executable,
                      help="interpreter with bilstm-jax installed that runs the variants "
                           "(default: this one)")
  parser.add_argument("--collect", action="store_true",
                      help="run no training: only the fusion (if listed) and the table")
  parser.add_argument("--force", action="store_true",
                      help="rerun variants whose report.json exists")
  parser.add_argument("--dry_run", action="store_true",
                      help="print every command instead of running it")
  args = parser.parse_args(argv)
  args.trainer_args = trainer_args
  # Runs start in the repository root, and SLURM jobs on other nodes: no cwd-relative paths.
  args.base = normalize_base(args.base)
  args.workdir = str(Path(args.workdir).expanduser().resolve())
  return args


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  try:
    variants = parse_variants(args.variants)
    check_configs(args.base, variants)
    if args.slurm and args.collect:
      raise AblationError("--collect runs here; it does not go with --slurm")
    if FUSION in variants and not args.dry_run and not fusion_available(args.python):
      raise AblationError(f"the fusion variant needs {FUSION_MODULE}, which {args.python} "
                          "cannot import; install bilstm-jax there or drop fusion from --variants")
    if args.slurm:
      run_slurm(args, variants)
      return 0
    if args.collect:
      if FUSION in variants:
        run_fusion(args)
    else:
      run_local(args, variants)
    if args.dry_run:
      print(f"# then write {Path(args.workdir) / TABLE_NAME}.md and .json")
      return 0
    return write_table(args.workdir, variants)
  except AblationError as e:
    print(f"ablations.py: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
