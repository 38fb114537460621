"""Session fixtures: one tiny synthetic dataset and its cached encoder features for all tests."""

import pytest

from tests.helpers import load_config


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
  """A data cache dir holding the tiny synthetic Polyvore, generated and built once."""
  from bilstm_jax import input_pipeline
  cache = tmp_path_factory.mktemp("data_cache")
  config = load_config("tiny")
  with config.unlocked():
    config.data.cache_dir = str(cache)
  input_pipeline.prepare(config.data)
  return cache


@pytest.fixture(scope="session")
def tiny_features(tiny_cache, tmp_path_factory):
  """Encoder features of every tiny-dataset item, written by the real feature_cache command."""
  from bilstm_jax import feature_cache
  config = load_config("tiny")
  with config.unlocked():
    config.data.cache_dir = str(tiny_cache)
  out = tmp_path_factory.mktemp("features") / "features.npz"
  feature_cache.write(config, out, batch_size=32)
  return out
