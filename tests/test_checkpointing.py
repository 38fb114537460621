"""Checkpoints: a broken newest one falls back to the previous; a NaN loss stops the run."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilstm_jax import checkpointing, train
from tests.helpers import load_config


def _state(value):
  return {"params": {"w": jnp.full((4, 3), value)}, "batch_stats": {}, "step": jnp.int32(value)}


def test_unreadable_newest_checkpoint_falls_back_to_previous(tmp_path, caplog):
  ckpt = checkpointing.Checkpoints(tmp_path, keep=3)
  ckpt.save(1, _state(1.0), {"step": 1})
  ckpt.save(2, _state(2.0), {"step": 2})
  ckpt.wait()
  for f in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"cut off mid-write")
  abstract = jax.eval_shape(lambda: _state(0.0))
  with caplog.at_level(logging.WARNING):
    state, data_state = checkpointing.Checkpoints(tmp_path, keep=3).restore_latest(abstract)
  assert data_state == {"step": 1}
  np.testing.assert_array_equal(state["params"]["w"], 1.0)
  assert "Checkpoint 2" in caplog.text and "previous" in caplog.text


def test_non_finite_loss_stops_naming_the_step(tiny_cache, tiny_features, tmp_path):
  config = load_config("tiny,cached")
  with config.unlocked():
    config.data.cache_dir = str(tiny_cache)
    config.data.encoder_features = str(tiny_features)
    config.train.optimizer = "sgd"
    config.train.learning_rate = 1e30
    config.train.clip_norm = 1e30
    config.train.num_steps = 6
    config.train.checkpoint_every = 100
    config.train.log_every = 3
    config.train.eval_every = 0
  with pytest.raises(train.NonFiniteLossError, match=r"at step \d+; stopping"):
    train.train(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists() or not any(
      p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())
