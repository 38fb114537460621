r"""Caches the image encoder's features of every item, for two-stage training.

With a frozen encoder its output per item never changes, so compute it once:

  python -m bilstm_jax.feature_cache --config=configs/bilstm.py:demo --out=/tmp/features.npz
  python -m bilstm_jax.main --config=configs/bilstm.py:demo,cached \
      --config.data.encoder_features=/tmp/features.npz --workdir=/tmp/cached

The .npz holds `ids` (item ids `<set_id>_<index>`) and `features` (float32
[items, D]) for the train, valid and test splits. The encoder is Inception v3 as
the config describes it, with `model.inception.weights` loaded when given
(random, seeded by `config.seed`, otherwise).
"""

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bilstm_jax import input_pipeline, metrics
from bilstm_jax.models import inception_v3
from bilstm_jax.models.outfit_lstm import compute_dtype
from tfds_polyvore import layout


def write(config: ml_collections.ConfigDict, out: str | os.PathLike, batch_size: int = 64) -> int:
  """Writes the features of every item of every split to `out`; returns the item count."""
  if config.data.encoder_features:
    raise ValueError("data.encoder_features is set: caching needs the images config; unset it.")
  dataset = input_pipeline.prepare(config.data)
  c = config.model.inception
  encoder = inception_v3.InceptionV3(depth_multiplier=c.depth_multiplier, min_depth=c.min_depth,
                                     keep_prob=c.keep_prob, bn_decay=c.bn_decay,
                                     dtype=compute_dtype(config.model.dtype))
  size = config.data.image_size
  variables = encoder.init(jax.random.key(config.seed), jnp.zeros((1, size, size, 3)), train=False)
  if c.weights:
    variables = inception_v3.load(variables, c.weights)
  apply = jax.jit(lambda v, x: encoder.apply(v, x, train=False))

  ids, chunks, start = [], [], time.perf_counter()
  for split in layout.SPLITS:
    table = dataset.item_table(split)
    ids += table.ids
    for pixels in table.batches(batch_size):
      n = len(pixels)  # pad the last batch so the encoder compiles once
      pixels = np.concatenate([pixels, np.zeros((batch_size - n,) + pixels.shape[1:], np.float32)])
      chunks.append(np.asarray(apply(variables, pixels))[:n])
    metrics.log(f"{split}: {len(table)} items encoded ({len(ids) / (time.perf_counter() - start):.1f} "
                "items/s so far)")
  np.savez(out, ids=np.asarray(ids), features=np.concatenate(chunks).astype(np.float32))
  return len(ids)


_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variants].",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Where to write the .npz.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per encoder call.")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
  # Threefry's partitionable layout makes XLA's CPU compiler take minutes over the
  # encoder's ~100 random initialisers; the classic layout compiles in seconds.
  jax.config.update("jax_threefry_partitionable", False)
  del argv
  try:
    n = write(_CONFIG.value, _OUT.value, _BATCH.value)
  except input_pipeline.DataNotFoundError as e:
    raise SystemExit(str(e))
  metrics.log(f"Wrote the encoder features of {n} items to {_OUT.value}.")


if __name__ == "__main__":
  app.run(main)
