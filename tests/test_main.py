"""The real entry point, `python -m bilstm_jax.main`, on tiny configs in temporary workdirs."""

import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bilstm_jax import checkpointing
from tests.helpers import ROOT


def _main(config, workdir, *overrides, wait=True):
  cmd = [sys.executable, "-m", "bilstm_jax.main", f"--config={ROOT}/configs/bilstm.py:{config}",
         f"--workdir={workdir}", *overrides]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_main_trains_evaluates_and_writes_its_workdir(tiny_cache, tmp_path):
  out = _main("tiny", tmp_path, f"--config.data.cache_dir={tiny_cache}",
              "--config.train.num_steps=4")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  for line in ("FITB (original, test):", "Compat AUC (original, test):",
               "FITB (resampled, test):", "Compat AUC (resampled, test):"):
    assert line in out.stdout, out.stdout[-2000:]

  config = json.loads((tmp_path / "config.json").read_text())
  assert config["train"]["num_steps"] == 4 and config["data"]["synthetic"] is True
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_lines = [l for l in lines if "loss" in l]
  assert [l["step"] for l in train_lines] == [2, 4]
  for key in ("forward_loss", "backward_loss", "vse_loss", "learning_rate", "grad_norm",
              "steps_per_sec"):
    assert np.isfinite(train_lines[-1][key]), key
  assert any("valid_loss" in l for l in lines)
  assert (tmp_path / "curves.png").stat().st_size > 0

  report = json.loads((tmp_path / "report.json").read_text())
  assert report["checkpoint_step"] == 4 and report["data"] == "synthetic"
  tasks = {(m["task"], m["protocol"]) for m in report["metrics"]}
  assert tasks == {(t, p) for t in ("fitb", "compat_auc") for p in ("original", "resampled")}
  assert all(0.0 <= m["value"] <= 1.0 for m in report["metrics"])
  _, step = checkpointing.restore_variables(tmp_path)
  assert step == 4


def test_paper_config_without_data_fails_fast(tmp_path):
  start = time.perf_counter()
  out = _main("", tmp_path / "w", f"--config.data.cache_dir={tmp_path}/cache",
              f"--config.data.root={tmp_path}/nowhere")
  assert out.returncode != 0
  assert time.perf_counter() - start < 60
  message = out.stderr
  assert "label/train_no_dup.json" in message and "images/<set_id>/<index>.jpg" in message
  assert "configs/bilstm.py:demo" in message  # how to run the demo instead
  assert "Traceback" not in message


def test_mistyped_config_key_is_an_error(tmp_path):
  out = _main("tiny", tmp_path, "--config.train.bach_size=3")
  assert out.returncode != 0 and "bach_size" in out.stderr


def test_disallowed_config_value_is_named_without_a_traceback(tiny_cache, tmp_path):
  out = _main("tiny", tmp_path, f"--config.data.cache_dir={tiny_cache}", "--config.model.cell=rnn")
  assert out.returncode != 0
  assert "model.cell must be one of ['gru', 'lstm'], got 'rnn'" in out.stderr
  assert "Traceback" not in out.stderr, out.stderr[-2000:]


def _params(workdir):
  variables, step = checkpointing.restore_variables(workdir)
  return jax.tree.map(np.asarray, variables["params"]), step


def test_killed_run_resumes_exactly(tiny_cache, tiny_features, tmp_path):
  """SIGKILL mid-run, start again with the same command: same parameters as never stopped."""
  args = ["tiny,cached", f"--config.data.cache_dir={tiny_cache}",
          f"--config.data.encoder_features={tiny_features}", "--config.train.num_steps=60",
          "--config.train.checkpoint_every=5", "--config.train.log_every=5",
          "--config.train.eval_every=0", "--config.train.batch_size=4"]
  straight = _main(args[0], tmp_path / "straight", *args[1:])
  assert straight.returncode == 0, straight.stderr[-3000:]

  workdir = tmp_path / "killed"
  proc = _main(args[0], workdir, *args[1:], wait=False)
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "10").exists():  # a completed (renamed) checkpoint
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and steps[-1] < 60, steps  # killed before the end

  resumed = _main(args[0], workdir, *args[1:])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming from step" in resumed.stdout
  want, want_step = _params(tmp_path / "straight")
  got, got_step = _params(workdir)
  assert got_step == want_step == 60
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, want)


@pytest.mark.slow
def test_demo_is_clearly_above_chance(tmp_path):
  """Quick start 1 (about 6 minutes on 2 CPU cores): FITB and AUC well above 25% and 0.5."""
  out = _main("demo", tmp_path / "w", f"--config.data.cache_dir={tmp_path}/cache")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  metrics = {(m["task"], m["protocol"]): m["value"]
             for m in json.loads((tmp_path / "w" / "report.json").read_text())["metrics"]}
  assert metrics[("fitb", "original")] > 0.5 and metrics[("compat_auc", "original")] > 0.8
  assert metrics[("fitb", "resampled")] > 0.35 and metrics[("compat_auc", "resampled")] > 0.6
