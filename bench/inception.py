"""Times the Inception v3 encoder: forward (eval mode) or a forward+backward step.

  python bench/inception.py --batch=16 --size=299
  python bench/inception.py --batch=16 --size=299 --backward --dtype=bfloat16

Parameters are random (drawn with NumPy: Flax's init compiles slowly on CPUs).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from bilstm_jax.models import inception_v3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=299)
  parser.add_argument("--depth_multiplier", type=float, default=1.0)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--backward", action="store_true", help="time a train-mode gradient step")
  parser.add_argument("--iters", type=int, default=3)
  args = parser.parse_args()

  model = inception_v3.InceptionV3(args.depth_multiplier, dtype=jnp.dtype(args.dtype))
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  variables = jax.tree.map(
      lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype), shapes)

  if args.backward:
    def loss(params, batch_stats, x):
      out, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                           rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
      return jnp.mean(out ** 2)
    step = jax.jit(jax.grad(loss))
    run = lambda: step(variables["params"], variables["batch_stats"], x)
  else:
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    run = lambda: forward(variables, x)

  start = time.perf_counter()
  jax.block_until_ready(run())
  print(f"compile + first run: {time.perf_counter() - start:.1f} s")
  times, cpu = [], time.process_time()
  for _ in range(args.iters):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  cpu = (time.process_time() - cpu) / args.iters  # low on a machine shared with others
  best = min(times)
  kind = "forward+backward" if args.backward else "forward"
  print(f"{kind}, batch {args.batch}, {args.size} px, depth {args.depth_multiplier}, "
        f"{args.dtype} on {jax.devices()[0].device_kind}: best {best:.2f} s/batch = "
        f"{args.batch / best:.1f} images/s (runs: {', '.join(f'{t:.2f}' for t in times)}; "
        f"{cpu:.2f} CPU s/batch)")


if __name__ == "__main__":
  main()
