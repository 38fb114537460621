"""Feature extraction, the .npz round trip, and refusing another config's variables."""

import dataclasses

import jax
import numpy as np
import pytest

from bilstm_jax.evaluation import features as features_lib
from bilstm_jax.evaluation.errors import ConfigMismatchError, EvaluationError, UnknownItemError
from bilstm_jax.evaluation.predictor import check_variables
from tests import _evaluation_world as world


@dataclasses.dataclass
class _Table:
  """The data layer's ItemTable interface: ids, categories, positions, batches()."""
  ids: list
  categories: np.ndarray
  positions: np.ndarray
  inputs: np.ndarray

  def batches(self, batch_size):
    for s in range(0, len(self.ids), batch_size):
      yield self.inputs[s:s + batch_size]


def test_extract_matches_direct_encoding_and_round_trips(tmp_path):
  config, model, variables, feats, outfits = world.trained()
  items = [it for o in outfits for it in o]
  table = _Table([i for i, _, _ in items], np.array([c for _, c, _ in items]),
                 feats.positions, np.stack([f for _, _, f in items]))
  got = features_lib.extract(model, variables, table, batch_size=7)  # a short last batch
  assert list(got.ids) == table.ids and got.vse.dtype == np.float32
  np.testing.assert_allclose(got.rnn, feats.rnn, atol=1e-5)
  np.testing.assert_allclose(got.vse, feats.vse, atol=1e-5)
  np.testing.assert_array_equal(got.categories, table.categories)
  path = tmp_path / "f" / "test.npz"
  got.save(path, step=7)
  back, meta = features_lib.ItemFeatures.load(path)
  assert meta == {"step": 7} and list(back.ids) == list(got.ids)
  np.testing.assert_array_equal(back.rnn, got.rnn)
  np.testing.assert_array_equal(back.rows([table.ids[3], table.ids[0]]), [3, 0])


def test_bad_tables_and_files(tmp_path):
  _, _, _, feats, _ = world.trained()
  with pytest.raises(UnknownItemError, match="'1_1'"):
    feats.rows(["1_1"])
  with pytest.raises(EvaluationError, match="appears twice"):
    features_lib.from_arrays(["a_1", "a_1"], np.zeros((2, 3)), np.zeros((2, 3)))
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  with pytest.raises(EvaluationError, match="bad.npz is not a feature file"):
    features_lib.ItemFeatures.load(bad)


def test_variables_of_another_config_are_refused():
  config, model, variables, _, _ = world.trained()
  check_variables(model, variables, world.example_batch())
  other = world.load_config("tiny")
  with other.unlocked():
    other.model.embed_dim = other.model.hidden_dim = 16
  other_model = world.make_model(other)
  with pytest.raises(ConfigMismatchError, match=r"\['f_logits'\]\['kernel'\]: shape \(32, 32\) "
                                                r"in the checkpoint, \(16, 16\) under this config"):
    check_variables(other_model, variables, world.example_batch())
  gru = world.load_config("tiny")
  with gru.unlocked():
    gru.model.cell = "gru"
  with pytest.raises(ConfigMismatchError, match="missing from the checkpoint"):
    check_variables(world.make_model(gru), variables, world.example_batch())
  assert jax.tree.leaves(variables)  # untouched
