"""launch/ablations.py: the commands it runs or submits, and the comparison table."""

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ablations", ROOT / "launch" / "ablations.py")
ablations = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablations)

PAPER = ["full", "no_vse", "vse_only", "forward_only", "backward_only", "siamese"]


def report(config, step, fitb, auc, data="synthetic", skipped=0):
  """A report.json in the format bilstm_jax.main writes (notes/CONTRACT.md)."""
  metrics = []
  for protocol in ("original", "resampled"):
    metrics.append({"task": "fitb", "protocol": protocol, "split": "test", "value": fitb,
                    "questions": 24, "skipped": skipped, "top_k": {"2": 0.7, "4": 1.0}})
    metrics.append({"task": "compat_auc", "protocol": protocol, "split": "test", "value": auc,
                    "outfits": 48, "skipped": 0})
  return {"config": config, "workdir": "w", "data": data, "checkpoint_step": step,
          "model": {"kind": "bilstm", "directions": "both", "vse": True}, "metrics": metrics}


def write_report(workdir, variant, **kwargs):
  path = Path(workdir) / variant / "report.json"
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps(report(**kwargs)))


def run_main(*args, capsys):
  code = ablations.main(list(args))
  out = capsys.readouterr()
  return code, out.out, out.err


def commands(stdout):
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def flag(command, name):
  values = [a.split("=", 1)[1] for a in command if a.startswith(f"--{name}=")]
  return values[0] if values else None


def test_help():
  result = subprocess.run([sys.executable, str(ROOT / "launch" / "ablations.py"), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0 and "--variants" in result.stdout and "--dry_run" in result.stdout


def test_table_from_reports(tmp_path, capsys):
  write_report(tmp_path, "full", config="configs/bilstm.py:tiny", step=4, fitb=0.625, auc=0.8312)
  write_report(tmp_path, "no_vse", config="configs/bilstm.py:tiny,no_vse", step=4, fitb=0.5,
               auc=0.7, skipped=2)
  code, out, _ = run_main("--base=configs/bilstm.py:tiny", f"--workdir={tmp_path}",
                          "--variants=full,no_vse", "--collect", capsys=capsys)
  assert code == 0
  markdown = (tmp_path / "ablations.md").read_text()
  assert markdown == out.split("# wrote")[0]
  lines = markdown.splitlines()
  assert lines[0] == ("| Variant | Config | Data | Protocol | Split | Step | FITB | "
                      "Compat AUC |")
  assert lines[2] == ("| full | `configs/bilstm.py:tiny` | synthetic | original | test | 4 | "
                      "62.5% | 0.831 |")
  assert lines[5] == ("| no_vse | `configs/bilstm.py:tiny,no_vse` | synthetic | resampled | "
                      "test | 4 | 50.0% (2 skipped) | 0.700 |")
  assert len(lines) == 6
  data = json.loads((tmp_path / "ablations.json").read_text())
  assert data["tasks"] == ["fitb", "compat_auc"] and data["missing"] == []
  assert [(r["variant"], r["protocol"]) for r in data["rows"]] == [
      ("full", "original"), ("full", "resampled"), ("no_vse", "original"),
      ("no_vse", "resampled")]
  assert data["rows"][0]["metrics"]["fitb"]["value"] == 0.625
  assert data["rows"][0]["checkpoint_step"] == 4 and data["rows"][0]["data"] == "synthetic"


def test_table_lists_missing_reports_and_fails(tmp_path, capsys):
  write_report(tmp_path, "full", config="c", step=4, fitb=0.5, auc=0.5)
  code, _, err = run_main("--base=configs/bilstm.py:tiny", f"--workdir={tmp_path}",
                          "--variants=full,siamese", "--collect", capsys=capsys)
  assert code == 1 and "siamese" in err
  assert "| siamese | missing: no report.json |" in (tmp_path / "ablations.md").read_text()
  assert json.loads((tmp_path / "ablations.json").read_text())["missing"][0]["variant"] == "siamese"


def test_bad_report_names_the_file(tmp_path, capsys):
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "report.json").write_text(json.dumps({"config": "c", "metrics": []}))
  code, _, err = run_main("--base=configs/bilstm.py:tiny", f"--workdir={tmp_path}",
                          "--variants=full", "--collect", capsys=capsys)
  assert code == 2 and str(tmp_path / "full" / "report.json") in err and "'data'" in err


def test_dry_run_runs_the_paper_ablations_then_fuses(tmp_path, capsys):
  code, out, _ = run_main("--base=configs/bilstm.py:demo", f"--workdir={tmp_path}", "--dry_run",
                          "--", "--config.train.num_steps=10", capsys=capsys)
  assert code == 0
  cmds = commands(out)
  train, fusion = cmds[:-1], cmds[-1]
  assert [c[1:3] for c in train] == [["-m", "bilstm_jax.main"]] * 6
  assert [flag(c, "config") for c in train] == [
      "configs/bilstm.py:demo"] + [f"configs/bilstm.py:demo,{v}" for v in PAPER[1:]]
  assert [flag(c, "workdir") for c in train] == [str(tmp_path / v) for v in PAPER]
  assert all(c[-1] == "--config.train.num_steps=10" for c in train)
  assert fusion[1:3] == ["-m", "bilstm_jax.evaluation.fusion"]
  assert flag(fusion, "workdirs").split(",") == [str(tmp_path / v)
                                                 for v in ("no_vse", "vse_only", "siamese")]
  assert flag(fusion, "out") == str(tmp_path / "fusion")
  assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_dry_run_slurm_submits_each_variant_then_the_table(tmp_path, capsys):
  code, out, _ = run_main("--base=configs/bilstm.py:gpu", f"--workdir={tmp_path}", "--slurm",
                          "--sbatch_args=--partition=gpu --account=me", "--dry_run",
                          capsys=capsys)
  assert code == 0
  cmds = commands(out)
  jobs, collect = cmds[:-1], cmds[-1]
  assert len(jobs) == 6 and all(c[0] == "sbatch" and "--partition=gpu" in c for c in jobs)
  for job, variant in zip(jobs, PAPER):
    script = job.index(str(ROOT / "launch" / "slurm.sbatch"))
    assert flag(job[script:], "workdir") == str(tmp_path / variant)
    assert flag(job[script:], "config").startswith("configs/bilstm.py:gpu")
  assert flag(collect, "dependency") == "afterok:" + ":".join(f"JOB_{v}" for v in PAPER)
  wrapped = shlex.split(flag(collect, "wrap"))
  assert wrapped[1].endswith("launch/ablations.py") and "--collect" in wrapped
  assert flag(wrapped, "variants") == ",".join(PAPER + ["fusion"])


def test_finished_variants_are_not_run_again(tmp_path, capsys):
  write_report(tmp_path, "full", config="c", step=4, fitb=0.5, auc=0.5)
  args = ["--base=configs/bilstm.py:tiny", f"--workdir={tmp_path}", "--variants=full,siamese",
          "--dry_run"]
  _, out, _ = run_main(*args, capsys=capsys)
  assert [flag(c, "workdir") for c in commands(out)] == [str(tmp_path / "siamese")]
  _, out, _ = run_main(*args, "--force", capsys=capsys)
  assert len(commands(out)) == 2


@pytest.mark.parametrize("variants, message", [
    ("full,nope", "Unknown config variant 'nope'"),
    ("full,full", "names full twice"),
])
def test_bad_variants_fail_before_running(tmp_path, capsys, variants, message):
  code, out, err = run_main("--base=configs/bilstm.py:tiny", f"--workdir={tmp_path}",
                            f"--variants={variants}", "--dry_run", capsys=capsys)
  assert code == 2 and message in err and commands(out) == []


def test_fusion_brings_in_its_members(tmp_path, capsys):
  code, out, err = run_main("--base=configs/bilstm.py:tiny", f"--workdir={tmp_path}",
                            "--variants=full,fusion", "--dry_run", capsys=capsys)
  assert code == 0 and "added to the variants" in err
  assert [Path(flag(c, "workdir") or flag(c, "out")).name for c in commands(out)] == [
      "full", "no_vse", "vse_only", "siamese", "fusion"]


def _fake_python(tmp_path, has_fusion=True):
  """Stands in for the interpreter: "trains" by writing report.json, "fuses" likewise."""
  path = tmp_path / "fake_python"
  path.write_text(f"""#!{sys.executable}
import json, pathlib, sys
args = sys.argv[1:]
if args[0] == "-c":
  sys.exit(0 if {has_fusion} else 1)
flags = dict(a[2:].split("=", 1) for a in args[2:] if "=" in a)
if args[1] == "bilstm_jax.main":
  out, config, step = flags["workdir"], flags["config"], 4
metrics = [{{"task": "fitb", "protocol": "original", "split": "test", "value": 0.5,
            "questions": 24, "skipped": 0}}]
if args[1] == "bilstm_jax.main":
  out = flags["workdir"]
  header = {{"config": flags["config"], "data": "synthetic", "checkpoint_step": 4}}
else:  # like bilstm_jax.evaluation.fusion: no config, data or step of its own
  out, header = flags["out"], {{"fusion": {{"workdirs": flags["workdirs"].split(",")}}}}
pathlib.Path(out).mkdir(parents=True)
pathlib.Path(out, "report.json").write_text(json.dumps({{
    **header, "workdir": out, "model": {{}}, "metrics": metrics}}))
""")
  path.chmod(0o755)
  return path


def test_local_run_trains_fuses_and_tabulates(tmp_path, capsys):
  fake = _fake_python(tmp_path)
  workdir = tmp_path / "abl"
  code, _, _ = run_main("--base=configs/bilstm.py:tiny", f"--workdir={workdir}",
                        f"--python={fake}", capsys=capsys)
  assert code == 0
  data = json.loads((workdir / "ablations.json").read_text())
  assert [r["variant"] for r in data["rows"]] == PAPER + ["fusion"]
  assert data["rows"][1]["config"] == "configs/bilstm.py:tiny,no_vse"
  fused = ", ".join(f"configs/bilstm.py:tiny,{m}" for m in ("no_vse", "vse_only", "siamese"))
  assert (f"| fusion | `late fusion of {fused}` | synthetic | original | test | 4/4/4 | 50.0% |"
          in (workdir / "ablations.md").read_text())
  assert data["rows"][-1]["checkpoint_step"] == [4, 4, 4]


def test_missing_fusion_module_fails_before_training(tmp_path, capsys):
  fake = _fake_python(tmp_path, has_fusion=False)
  code, out, err = run_main("--base=configs/bilstm.py:tiny", f"--workdir={tmp_path}/abl",
                            f"--python={fake}", capsys=capsys)
  assert code == 2 and "bilstm_jax.evaluation.fusion" in err and commands(out) == []


def _run_tiny_ablations(tmp_path, variants: str, timeout: int) -> dict:
  """launch/ablations.py on the tiny config for real; returns its ablations.json."""
  workdir = tmp_path / "abl"
  result = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "ablations.py"), "--base=configs/bilstm.py:tiny",
       f"--workdir={workdir}", f"--variants={variants}", "--",
       f"--config.data.cache_dir={tmp_path / 'cache'}"],
      capture_output=True, text=True, timeout=timeout, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return json.loads((workdir / "ablations.json").read_text())


@pytest.mark.slow
def test_real_runs_on_demo_data(tmp_path):
  """Two real tiny runs on the synthetic data, then their table (~4 min a run on 2 CPUs)."""
  data = _run_tiny_ablations(tmp_path, "full,vse_only", timeout=1200)
  assert {r["variant"] for r in data["rows"]} == {"full", "vse_only"}
  assert all(r["data"] == "synthetic" and r["checkpoint_step"] == 4 for r in data["rows"])
  assert {"fitb", "compat_auc"} <= set(data["tasks"])


@pytest.mark.slow
def test_real_late_fusion_on_demo_data(tmp_path):
  """The fusion row from three real tiny runs (minutes on 2 CPUs)."""
  data = _run_tiny_ablations(tmp_path, "fusion", timeout=1800)
  assert [r["variant"] for r in data["rows"]][-1] == "fusion"
