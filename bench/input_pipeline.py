r"""Benchmark: does the input pipeline keep up with the train step?

Measures, on the config's data (the embedded synthetic Polyvore by default):
  1. prepare: generating and building the dataset (cold), then reopening it (warm);
  2. the loader alone: training batches per second and decoded images per second;
  3. the train step fed by the loader: the share of each step spent waiting for data.

  python bench/input_pipeline.py --config=configs/bilstm.py:demo
  python bench/input_pipeline.py --config=configs/bilstm.py:demo --config.data.image_size=299 \
      --config.train.batch_size=10 --steps=10
"""

import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

import common
from bilstm_jax import input_pipeline

config_flags.DEFINE_config_file("config", "configs/bilstm.py:demo", "The config to measure.")
flags.DEFINE_integer("batches", 40, "Batches the loader alone produces.")
flags.DEFINE_integer("steps", 20, "Train steps fed by the loader (0: skip the train step).")
flags.DEFINE_bool("fresh_cache", True, "Build in a temporary cache dir (measures a cold build).")
flags.DEFINE_string("json_out", "", "Write the results here.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  jax.config.update("jax_threefry_partitionable", False)  # fast init compiles on CPUs
  config = FLAGS.config
  with tempfile.TemporaryDirectory() as tmp:
    if FLAGS.fresh_cache:
      config.unlock()
      config.data.cache_dir = tmp
    t = time.perf_counter()
    ds = input_pipeline.prepare(config.data)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    ds = input_pipeline.prepare(config.data)
    warm = time.perf_counter() - t
    print(f"prepare: {cold:.1f} s cold (generate + build), {warm:.2f} s warm; "
          f"{ds.num_outfits('train')} train outfits, {ds.source} data")
    d = config.data
    env = common.environment()
    print(common.describe(env))
    print(f"batch {config.train.batch_size} outfits x {d.max_items} slots, "
          f"images {d.image_size}px, {d.num_threads} decode threads")
    record = {"benchmark": "input_pipeline", "environment": env,
              "config": {"batch_size": config.train.batch_size, "image_size": d.image_size,
                         "max_items": d.max_items, "num_threads": d.num_threads},
              "prepare_cold_s": cold, "prepare_warm_s": warm, **_loader(ds, config)}
    if FLAGS.steps:
      record.update(_fed_train_steps(ds, config, record["batches_per_s"]))
    common.write_json(FLAGS.json_out, record)


def _loader(ds, config) -> dict:
  it = input_pipeline.train_batches(ds, config, process_index=0, process_count=1)
  next(it)  # warm up the pools
  images, t = 0, time.perf_counter()
  for _ in range(FLAGS.batches):
    images += int(next(it)["mask"].sum())
  dt = time.perf_counter() - t
  it.close()
  print(f"loader: {FLAGS.batches / dt:.1f} batches/s, {images / dt:.0f} decoded images/s")
  return {"batches_per_s": FLAGS.batches / dt, "images_per_s": images / dt}


def _fed_train_steps(ds, config, loader_rate) -> dict:
  # The lead's trainer, exactly as train.py builds it.
  from bilstm_jax import sharding
  from bilstm_jax import train
  from bilstm_jax.models.outfit_lstm import OutfitModel
  model = OutfitModel(config.model, vocab_size=ds.vocab.size, feature_dim=ds.feature_dim)
  mesh = sharding.make_mesh(config.mesh)
  steps_per_epoch = max(ds.num_outfits("train") // config.train.batch_size, 1)
  trainer = train.make_trainer(model, config, steps_per_epoch,
                               ds.example_batch(config.train.batch_size), mesh)
  state = trainer.init()
  it = input_pipeline.train_batches(ds, config, process_index=0, process_count=1)
  state, _ = trainer.train_step(state, sharding.global_batch(next(it), mesh))  # compile
  jax.block_until_ready(state)
  waits, t = [], time.perf_counter()
  for _ in range(FLAGS.steps):
    w = time.perf_counter()
    batch = next(it)
    waits.append(time.perf_counter() - w)
    state, _ = trainer.train_step(state, sharding.global_batch(batch, mesh))
    jax.block_until_ready(state)
  dt = time.perf_counter() - t
  it.close()
  step_rate = FLAGS.steps / dt
  print(f"train step fed by the loader: {step_rate:.2f} steps/s, waiting for data "
        f"{100 * sum(waits) / dt:.1f}% of the time (median wait {1e3 * np.median(waits):.1f} ms); "
        f"the loader alone makes {loader_rate / step_rate:.1f}x the batches the step consumes")
  return {"fed_steps_per_s": step_rate, "data_wait_fraction": sum(waits) / dt,
          "median_wait_s": float(np.median(waits)), "loader_vs_step": loader_rate / step_rate}


if __name__ == "__main__":
  app.run(main)
