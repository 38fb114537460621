r"""Benchmark: the full jitted train step (the one train.py runs), against the matmul peak.

  python bench/train_step.py                                   # paper, demo, tiny, cached
  python bench/train_step.py --cases=paper --dtype=bfloat16 --repeats=3
  python bench/train_step.py --cases=tiny --batch=8 --devices=4  # 4 fake CPU devices

Cases: paper (Inception v3 at 299 px, 10 outfits x 8 items, fine-tuned), demo, tiny
(configs/bilstm.py's variants) and cached (frozen encoder, 2048-d cached features,
the cached variant's batch of 64). Batches are random arrays of the right shapes
(the step's cost does not depend on the values); every outfit has all 8 items, so
images/s counts every slot the encoder sees. FLOPs come from XLA's cost analysis
of the compiled step; the float32 (and, for bfloat16 steps, bfloat16) matmul peak
is measured in the same process. Several cases run one process each, so each
has its own peak host memory.
"""

import argparse
import sys

import jax

# Threefry's partitionable layout makes XLA's CPU compiler take minutes over Inception's
# random initialisers (main.py sets the same).
jax.config.update("jax_threefry_partitionable", False)

import time  # pylint: disable=g-import-not-at-top

import numpy as np  # pylint: disable=g-import-not-at-top

import common  # pylint: disable=g-import-not-at-top
from bilstm_jax import sharding, train  # pylint: disable=g-import-not-at-top
from bilstm_jax.models.outfit_lstm import OutfitModel  # pylint: disable=g-import-not-at-top

CASES = {"paper": "", "demo": "demo", "tiny": "tiny", "cached": "cached"}
VOCAB_SIZE = 2_759  # about the Maryland vocabulary (min count 30) plus pad and UNK
FEATURE_DIM = 2048  # Inception v3's pooled features, as cached for the cached case


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default="paper,demo,tiny,cached",
                      help=f"comma-separated, from {', '.join(CASES)}")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="compute dtype (default: the config's)")
  parser.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
  parser.add_argument("--filter_grad", choices=("auto", "matmul", "xla"), default=None,
                      help="convolution filter gradients (default: the config's, auto)")
  parser.add_argument("--fsdp", type=int, default=1, help="mesh.fsdp (parameter sharding)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  parser.add_argument("--repeats", type=int, default=3, help="timed steps (median reported)")
  parser.add_argument("--peak_n", type=int, default=4096, help="side of the peak matmul")
  parser.add_argument("--devices", type=int, default=0,
                      help="fake CPU devices per process (0: leave the platform alone)")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--coordinator_address", default="", help="host:port of process 0")
  parser.add_argument("--profile_dir", default="", help="write a profile of one step here")
  parser.add_argument("--json_out", default="", help="write the results here")
  return parser.parse_args(argv)


def make_config(case: str, args: argparse.Namespace):
  config = common.load_config(CASES[case])
  config.unlock()
  if args.dtype:
    config.model.dtype = args.dtype
  if args.batch:
    config.train.batch_size = args.batch
  if args.filter_grad:
    config.model.inception.filter_grad = args.filter_grad
  config.mesh.fsdp = args.fsdp
  return config


def random_batch(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A batch of full outfits (T items each) with random pixels or features and names."""
  b, t, l = batch_size, config.data.max_items, config.data.max_tokens
  tokens = rng.integers(1, VOCAB_SIZE, (b, t, l)).astype(np.int32)
  tokens[..., 6:] = 0  # item names are a few words long
  batch = {"mask": np.ones((b, t), bool), "lengths": np.full(b, t, np.int32),
           "tokens": tokens, "categories": np.zeros((b, t), np.int32)}
  if config.model.train_inception:
    s = config.data.image_size
    batch["images"] = rng.uniform(-1, 1, (b, t, s, s, 3)).astype(np.float32)
  else:
    batch["features"] = rng.normal(size=(b, t, FEATURE_DIM)).astype(np.float32)
  return batch


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per module
  return float(cost["flops"]) if cost and "flops" in cost else None


def _compiled_memory(compiled) -> dict[str, int] | None:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
          "generated_code_size_in_bytes")
  return {k: int(getattr(stats, k)) for k in keys if hasattr(stats, k)}


def _xla_filter_grad_step(config, model, example, mesh, state, batch):
  """The same step compiled with XLA's conv filter gradients, for its FLOP count.

  The "matmul" filter gradient loops over image groups, and XLA's cost analysis
  counts a loop body once; the math (and so the FLOPs) is the same.
  """
  config = config.copy_and_resolve_references()
  config.model.inception.filter_grad = "xla"
  model = model.clone(config=config.model)
  trainer = train.make_trainer(model, config, steps_per_epoch=1000, example=example, mesh=mesh)
  return trainer.train_step.lower(state, batch).compile()


def run_case(case: str, args: argparse.Namespace) -> dict:
  """Compiles and times one case's train step in this process."""
  config = make_config(case, args)
  global_batch = config.train.batch_size
  if global_batch % args.num_processes:
    raise ValueError(f"--batch={global_batch} must divide over {args.num_processes} processes")
  env = common.environment()
  dtype = config.model.dtype
  peaks = {"float32": common.matmul_peak("float32", args.peak_n)}
  if dtype != "float32":
    peaks[dtype] = common.matmul_peak(dtype, args.peak_n)

  feature_dim = None if config.model.train_inception else FEATURE_DIM
  model = OutfitModel(config.model, vocab_size=VOCAB_SIZE, feature_dim=feature_dim)
  mesh = sharding.make_mesh(config.mesh)
  rng = np.random.default_rng(args.process_id)
  local = random_batch(config, global_batch // args.num_processes, rng)
  example = random_batch(config, global_batch, rng)
  trainer = train.make_trainer(model, config, steps_per_epoch=1000, example=example, mesh=mesh)
  start = time.perf_counter()
  state = jax.block_until_ready(trainer.init())
  init_s = time.perf_counter() - start
  batch = sharding.global_batch(local, mesh)
  start = time.perf_counter()
  compiled = trainer.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  print(f"{case}: init {init_s:.1f} s, compile {compile_s:.1f} s; timing {args.warmup} + "
        f"{args.repeats} steps", flush=True)

  def step():
    nonlocal state
    state, terms = compiled(state, batch)
    jax.block_until_ready((state, terms))

  timing = common.timeit(step, args.warmup, args.repeats)
  if args.profile_dir:
    with jax.profiler.trace(args.profile_dir):
      step()
  seconds = timing["median_s"]
  loops = config.model.train_inception and config.model.inception.filter_grad != "xla"
  flops = _flops(_xla_filter_grad_step(config, model, example, mesh, state, batch) if loops
                 else compiled)
  if flops is not None:
    flops *= jax.device_count()  # the cost analysis counts one device's share
  images = global_batch * config.data.max_items if config.model.train_inception else None
  achieved = None if flops is None else flops / seconds
  peak = peaks[dtype]["flops_per_s"]
  return {
      "benchmark": "train_step", "case": case, "environment": env,
      "config": {"image_size": config.data.image_size, "batch_size": global_batch,
                 "max_items": config.data.max_items, "dtype": dtype,
                 "depth_multiplier": config.model.inception.depth_multiplier,
                 "embed_dim": config.model.embed_dim, "hidden_dim": config.model.hidden_dim,
                 "train_inception": config.model.train_inception,
                 "filter_grad": config.model.inception.filter_grad,
                 "mesh": dict(mesh.shape), "optimizer": config.train.optimizer},
      "warmup": args.warmup, "repeats": args.repeats, "init_s": init_s, "compile_s": compile_s,
      **timing, "steps_per_s": 1 / seconds, "outfits_per_s": global_batch / seconds,
      "images_per_s": None if images is None else images / seconds,
      "flops_per_step": flops, "achieved_flops_per_s": achieved,
      "matmul_peak": peaks, "fraction_of_peak": None if achieved is None else achieved / peak,
      "host_peak_rss_bytes": common.host_peak_rss_bytes(), "device_memory": common.device_memory(),
      "compiled_memory": _compiled_memory(compiled)}


def summarize(r: dict) -> dict:
  """The row of the printed table for one result."""
  if "error" in r:
    return {"case": r.get("case"), "error": r["error"][-200:]}
  c = r["config"]
  dev = r["device_memory"] or {}
  px = c["image_size"] if c["train_inception"] else None  # cached features: no images
  return {"case": r["case"], "dtype": c["dtype"], "px": px, "batch": c["batch_size"],
          "devices": r["environment"]["devices"], "procs": r["environment"]["processes"],
          "step_s": r["median_s"], "steps/s": r["steps_per_s"], "outfits/s": r["outfits_per_s"],
          "images/s": r["images_per_s"],
          "GFLOP/step": None if r["flops_per_step"] is None else r["flops_per_step"] / 1e9,
          "GFLOP/s": None if r["achieved_flops_per_s"] is None
          else r["achieved_flops_per_s"] / 1e9,
          "peak GFLOP/s": r["matmul_peak"][c["dtype"]]["flops_per_s"] / 1e9,
          "of peak": r["fraction_of_peak"], "host GB": r["host_peak_rss_bytes"] / 1e9,
          "device GB": dev.get("peak_bytes_in_use", 0) / 1e9 if dev else None,
          "compile_s": r["compile_s"]}


COLUMNS = ("case", "dtype", "px", "batch", "devices", "procs", "step_s", "steps/s", "outfits/s",
           "images/s", "GFLOP/step", "GFLOP/s", "peak GFLOP/s", "of peak", "host GB",
           "device GB", "compile_s")


def _child_args(args: argparse.Namespace, case: str) -> list[str]:
  out = [f"--cases={case}", f"--batch={args.batch}", f"--fsdp={args.fsdp}",
         f"--warmup={args.warmup}", f"--repeats={args.repeats}", f"--peak_n={args.peak_n}",
         f"--devices={args.devices}"]
  out += [f"--dtype={args.dtype}"] if args.dtype else []
  return out + ([f"--filter_grad={args.filter_grad}"] if args.filter_grad else [])


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  cases = [c.strip() for c in args.cases.split(",") if c.strip()]
  unknown = set(cases) - set(CASES)
  if unknown:
    sys.exit(f"Unknown --cases {sorted(unknown)}; choose from {', '.join(CASES)}.")
  if len(cases) > 1:  # one process per case: each its own memory peak and compile cache
    results = []
    for case in cases:
      r = common.run_script("train_step.py", _child_args(args, case), timeout=3600)
      results.append(r["results"][0] if "results" in r else {"case": case, **r})
  else:
    if args.devices:
      jax.config.update("jax_num_cpu_devices", args.devices)
    if args.num_processes > 1:
      sharding.initialize_processes(args.coordinator_address, args.num_processes,
                                    args.process_id)
    results = [run_case(cases[0], args)]
    print(common.describe(results[0]["environment"]))
  common.print_table([summarize(r) for r in results], COLUMNS)
  if args.process_id == 0:
    common.write_json(args.json_out, {"benchmark": "train_step", "results": results})


if __name__ == "__main__":
  main(sys.argv[1:])
