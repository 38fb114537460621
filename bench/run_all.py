r"""Runs every benchmark, writes one JSON file and prints the summary with the targets.

  python bench/run_all.py                       # small budget (~6 min on 2 CPU cores; full: ~10)
  python bench/run_all.py --budget=full --out=bench/results.json
  python bench/run_all.py --only=train_step,evaluation

Each benchmark runs in its own processes (own jax flags, own memory peak).
Targets are reported as met or not; nothing here fails for being slow.
"""

import argparse
import sys
import time

import common

BUDGETS = {
    "small": {
        "train_step": ["--cases=paper,demo,tiny,cached", "--warmup=1", "--repeats=2"],
        "scaling": ["--case=tiny", "--batch=8", "--warmup=1", "--repeats=3"],
        "input_pipeline": ["--batches=20", "--steps=10"],
        "evaluation": ["--loop_outfits=100"],
    },
    "full": {
        "train_step": ["--cases=paper,demo,tiny,cached", "--warmup=2", "--repeats=5"],
        "scaling": ["--case=demo", "--batch=16", "--warmup=2", "--repeats=5"],
        "input_pipeline": ["--batches=100", "--steps=50"],
        "evaluation": ["--loop_outfits=400"],
    },
}
SCRIPTS = {"train_step": "train_step.py", "scaling": "scaling.py",
           "input_pipeline": "input_pipeline.py", "evaluation": "evaluation.py"}


def targets(results: dict) -> list[dict]:
  """The issue's targets, each with the measured value and whether it is met."""
  out = []
  ev = results.get("evaluation", {})
  if "compat_s" in ev:
    out.append({"target": "compat AUC (Maryland-sized) < 10 s", "value": ev["compat_s"],
                "met": ev["compat_s"] < 10})
    out.append({"target": "compat AUC >= 50x the per-outfit loop", "value": ev["speedup"],
                "met": ev["speedup"] >= 50})
  ip = results.get("input_pipeline", {})
  if ip.get("loader_vs_step") is not None:
    out.append({"target": "input pipeline >= 2x what the demo step consumes",
                "value": ip["loader_vs_step"], "met": ip["loader_vs_step"] >= 2})
  paper = [r for r in results.get("train_step", {}).get("results", [])
           if r.get("case") == "paper" and r.get("fraction_of_peak") is not None]
  for r in paper:
    out.append({"target": f"paper step ({r['config']['dtype']}) >= 1/3 of the matmul peak",
                "value": r["fraction_of_peak"], "met": r["fraction_of_peak"] >= 1 / 3})
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget", choices=tuple(BUDGETS), default="small")
  parser.add_argument("--out", default="bench/results.json")
  parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated benchmarks")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
  args = parser.parse_args()
  names = [n for n in args.only.split(",") if n]
  unknown = set(names) - set(SCRIPTS)
  if unknown:
    sys.exit(f"Unknown --only {sorted(unknown)}; choose from {', '.join(SCRIPTS)}.")

  results, seconds = {}, {}
  for name in names:
    start = time.perf_counter()
    results[name] = common.run_script(SCRIPTS[name], BUDGETS[args.budget][name], args.timeout)
    seconds[name] = time.perf_counter() - start
    print(f"-- {name}: {seconds[name]:.0f} s\n", flush=True)

  checks = targets(results)
  print("Targets (measured on this run):")
  common.print_table(checks, ("target", "value", "met"))
  errors = {n: r["error"] for n, r in results.items() if "error" in r}
  for name, error in errors.items():
    print(f"{name} FAILED: {error[-500:]}")
  common.write_json(args.out, {"budget": args.budget, "seconds": seconds, "targets": checks,
                               "benchmarks": results})
  if errors:
    sys.exit(1)


if __name__ == "__main__":
  main()
