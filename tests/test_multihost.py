"""Two real JAX processes on localhost (CPU collectives): same result as one process."""

import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from bilstm_jax import checkpointing
from tests.helpers import ROOT


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _args(cache, features, workdir, steps):
  return [sys.executable, "-m", "bilstm_jax.main", f"--config={ROOT}/configs/bilstm.py:tiny,cached",
          f"--workdir={workdir}", f"--config.data.cache_dir={cache}",
          f"--config.data.encoder_features={features}", f"--config.train.num_steps={steps}",
          "--config.train.checkpoint_every=3", "--config.train.eval_every=0",
          "--config.train.batch_size=4", "--config.eval.generate=0",
          # plain SGD: Adam would magnify reduction-order rounding of near-zero gradients
          "--config.train.optimizer=sgd", "--config.train.learning_rate=0.1"]


def _run_pair(args, timeout=400, kill_second_after=None):
  port = _free_port()
  procs = [subprocess.Popen(args + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                    f"--process_id={i}", "--heartbeat_timeout=10"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  if kill_second_after is not None:
    time.sleep(kill_second_after)
    procs[1].send_signal(signal.SIGKILL)
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  return [p.returncode for p in procs], outs


def _params(workdir):
  variables, step = checkpointing.restore_variables(workdir)
  return jax.tree.map(np.asarray, variables["params"]), step


def test_two_processes_match_one_and_resume(tiny_cache, tiny_features, tmp_path):
  one = subprocess.run(_args(tiny_cache, tiny_features, tmp_path / "one", 6), cwd=ROOT,
                       capture_output=True, text=True, timeout=400)
  assert one.returncode == 0, one.stderr[-3000:]

  two = tmp_path / "two"
  codes, outs = _run_pair(_args(tiny_cache, tiny_features, two, 3))  # stop at the checkpoint
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  codes, outs = _run_pair(_args(tiny_cache, tiny_features, two, 6))  # restore, go on to 6
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert "Resuming from step 3" in outs[0]
  assert "FITB (original, test)" in outs[0] and "FITB (original, test)" not in outs[1]

  want, want_step = _params(tmp_path / "one")
  got, got_step = _params(two)
  assert got_step == want_step == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_a_dead_process_stops_the_other(tiny_cache, tiny_features, tmp_path):
  start = time.perf_counter()
  args = _args(tiny_cache, tiny_features, tmp_path / "w", 100_000)
  codes, outs = _run_pair(args, timeout=300, kill_second_after=20)
  assert codes[1] == -signal.SIGKILL
  assert codes[0] != 0, outs[0][-3000:]  # it stopped with an error instead of hanging
  assert time.perf_counter() - start < 300
