"""Shared by the benchmarks: environment, timing, matmul peak, memory, JSON and tables."""

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(arg: str = ""):
  """configs/bilstm.py's get_config(arg), without making configs/ a package."""
  spec = importlib.util.spec_from_file_location("bilstm_config", ROOT / "configs" / "bilstm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def environment() -> dict[str, Any]:
  """Devices, versions and the host, printed and stored with every result."""
  import jax  # pylint: disable=g-import-not-at-top  (callers set jax flags first)
  versions = {"python": platform.python_version()}
  for package in ("jax", "jaxlib", "flax", "optax", "numpy"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  device = jax.devices()[0]
  return {"platform": device.platform, "device_kind": device.device_kind,
          "devices": jax.device_count(), "local_devices": jax.local_device_count(),
          "processes": jax.process_count(), "host_cpus": os.cpu_count(),
          "load_average": os.getloadavg()[0], "versions": versions}


def describe(env: dict[str, Any]) -> str:
  v = env["versions"]
  return (f"{env['devices']} x {env['device_kind']} ({env['platform']}), "
          f"{env['processes']} process(es), {env['host_cpus']} host CPUs, "
          f"load {env['load_average']:.1f}; python {v['python']}, jax {v['jax']}, "
          f"flax {v['flax']}")


def timeit(fn: Callable[[], Any], warmup: int, repeats: int) -> dict[str, Any]:
  """Median wall time of `repeats` calls after `warmup` calls; `fn` must block until done."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {"median_s": statistics.median(times), "times_s": times}


def matmul_peak(dtype: str = "float32", n: int = 4096, repeats: int = 3) -> dict[str, Any]:
  """This machine's dense matmul FLOP/s now: median of n x n x n jnp.dot."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  dot = jax.jit(jnp.dot)
  timing = timeit(lambda: dot(a, a).block_until_ready(), warmup=1, repeats=repeats)
  return {"dtype": dtype, "n": n, "flops_per_s": 2.0 * n**3 / timing["median_s"], **timing}


def host_peak_rss_bytes() -> int:
  """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024


def device_memory() -> dict[str, int] | None:
  """Peak and current bytes of the first local device, where the backend reports them."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.local_devices()[0].memory_stats()
  if not stats:
    return None
  keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
  return {k: int(stats[k]) for k in keys if k in stats}


def write_json(path: str | os.PathLike | None, record: dict[str, Any]) -> None:
  if path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
  """A plain text table of the given columns (floats to 3 significant digits)."""
  fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else ("-" if v is None else str(v))
  cells = [[fmt(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
  for row in cells:
    print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def run_script(script: str, args: Sequence[str], timeout: float,
               env: dict[str, str] | None = None) -> dict[str, Any]:
  """Runs bench/<script> in a fresh process (own memory peak, own jax flags); returns its JSON."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "result.json"
    cmd = [sys.executable, str(ROOT / "bench" / script), *args, f"--json_out={out}"]
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout,
                          capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0 or not out.exists():
      return {"error": f"{script} exited with {proc.returncode}: {proc.stderr[-2000:]}"}
    return json.loads(out.read_text())
