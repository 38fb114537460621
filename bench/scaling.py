r"""Benchmark: train-step throughput on 1, 2, 4, 8 devices and on 2 processes.

  python bench/scaling.py                          # tiny case, global batch 8, fake CPU devices
  python bench/scaling.py --case=demo --devices=1,2,4,8 --processes=2
  python bench/scaling.py --case=paper --batch=80 --real   # GPUs/TPUs: the real devices

The global batch stays fixed, so on one CPU (whose fake devices share the same
cores) the throughput should stay flat and any loss is the sharding's overhead.
Each setting runs bench/train_step.py in fresh processes: N fake CPU devices
(jax_num_cpu_devices), or P processes on localhost joined by jax.distributed with
gloo collectives (one device each). With --real, the device counts are taken from
the accelerator's devices (jax.devices()[:N] is not selectable, so only the full
count runs) and the process setting is skipped.
"""

import argparse
import json
import pathlib
import socket
import subprocess
import sys
import tempfile

import common
import train_step


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _multiprocess(step_args: list[str], processes: int, timeout: float) -> dict:
  """train_step.py in `processes` processes on localhost; process 0's result."""
  port = _free_port()
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "result.json"
    procs = [subprocess.Popen(
        [sys.executable, str(common.ROOT / "bench" / "train_step.py"), *step_args, "--devices=1",
         f"--num_processes={processes}", f"--process_id={i}",
         f"--coordinator_address=127.0.0.1:{port}", f"--json_out={out}"],
        cwd=common.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(processes)]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    sys.stdout.write(logs[0])
    if any(p.returncode for p in procs) or not out.exists():
      return {"error": f"{processes} processes exited with {[p.returncode for p in procs]}: "
                       + logs[0][-1500:] + logs[-1][-1500:]}
    return json.loads(out.read_text())["results"][0]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--case", default="tiny", choices=tuple(train_step.CASES))
  parser.add_argument("--batch", type=int, default=8, help="global batch, divisible by every count")
  parser.add_argument("--devices", default="1,2,4,8", help="device counts to run")
  parser.add_argument("--processes", type=int, default=2, help="processes to run (0: skip)")
  parser.add_argument("--real", action="store_true", help="use the accelerator's devices")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per setting")
  parser.add_argument("--json_out", default="")
  args = parser.parse_args()

  step_args = [f"--cases={args.case}", f"--batch={args.batch}", f"--warmup={args.warmup}",
               f"--repeats={args.repeats}", "--peak_n=2048"]
  step_args += [f"--dtype={args.dtype}"] if args.dtype else []
  # Like for like: one device would otherwise take the matmul filter gradient
  # (models/conv.py), which several devices never do.
  step_args += ["--filter_grad=xla"]
  results = []
  if args.real:
    results.append(common.run_script("train_step.py", step_args, args.timeout))
  else:
    for n in (int(d) for d in args.devices.split(",") if d):
      results.append(common.run_script("train_step.py", step_args + [f"--devices={n}"],
                                       args.timeout))
    if args.processes > 1:
      results.append(_multiprocess(step_args, args.processes, args.timeout))
  flat = [r["results"][0] if "results" in r else r for r in results]
  base = next((r["steps_per_s"] for r in flat if "error" not in r), None)
  rows = []
  for r in flat:
    row = train_step.summarize(r)
    if "error" not in r and base:
      row["vs first"] = r["steps_per_s"] / base
    rows.append(row)
  common.print_table(rows, ("case", "devices", "procs", "batch", "step_s", "steps/s",
                            "outfits/s", "vs first", "compile_s"))
  common.write_json(args.json_out, {"benchmark": "scaling", "case": args.case,
                                    "batch_size": args.batch, "results": flat})


if __name__ == "__main__":
  main()
