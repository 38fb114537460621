"""The outfit model against NumPy: the TF-style LSTM step, text encoder, padding, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilstm_jax.models import losses
from bilstm_jax.models.outfit_lstm import OutfitModel
from tests.helpers import load_config

E, D, V = 8, 6, 20


def _model(cell="lstm", dtype="float32"):
  config = load_config("tiny")
  with config.unlocked():
    config.model.embed_dim = config.model.hidden_dim = E
    config.model.cell = cell
    config.model.dtype = dtype
  return OutfitModel(config.model, vocab_size=V, feature_dim=D)


def _batch(lengths, t=5, seed=0):
  rng = np.random.default_rng(seed)
  b = len(lengths)
  lengths = np.array(lengths, np.int32)
  mask = np.arange(t)[None, :] < lengths[:, None]
  tokens = rng.integers(0, V, size=(b, t, 4)) * mask[..., None]
  return {"features": rng.normal(size=(b, t, D)).astype(np.float32), "lengths": lengths,
          "mask": mask, "tokens": tokens.astype(np.int32)}


def _init(model, batch):
  return model.init({"params": jax.random.key(0)}, batch, train=False)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _np_lstm(kernel, bias, xs):
  """TensorFlow BasicLSTMCell: gates i, j, f, o from [x, h]; forget bias 1.0."""
  h = c = np.zeros(bias.shape[0] // 4)
  outs = []
  for x in xs:
    i, j, f, o = np.split(np.concatenate([x, h]) @ kernel + bias, 4)
    c = c * _sigmoid(f + 1.0) + _sigmoid(i) * np.tanh(j)
    h = np.tanh(c) * _sigmoid(o)
    outs.append(h)
  return np.array(outs)


def test_predictions_match_numpy_lstm_in_both_directions():
  model = _model()
  batch = _batch([3, 5, 1])
  params = _init(model, batch)["params"]
  rnn = np.asarray(model.apply({"params": params}, batch["features"], train=False,
                               method=OutfitModel.encode_items)[1])
  fwd, bwd = model.apply({"params": params}, rnn, batch["lengths"], False,
                         method=OutfitModel.predict)
  p = jax.tree.map(np.asarray, params)
  for b, n in enumerate(batch["lengths"]):
    f_h = _np_lstm(p["forward_cell"]["linear"]["kernel"], p["forward_cell"]["linear"]["bias"],
                   rnn[b, :n])
    b_h = _np_lstm(p["backward_cell"]["linear"]["kernel"], p["backward_cell"]["linear"]["bias"],
                   rnn[b, :n][::-1])[::-1]
    want_f = f_h @ p["f_logits"]["kernel"] + p["f_logits"]["bias"]
    want_b = b_h @ p["b_logits"]["kernel"] + p["b_logits"]["bias"]
    np.testing.assert_allclose(fwd[b, :n], want_f, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bwd[b, :n], want_b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_never_changes_a_real_position(cell):
  model = _model(cell)
  batch = _batch([2, 4, 1])
  variables = _init(model, batch)
  noisy = dict(batch, features=batch["features"].copy(), tokens=batch["tokens"].copy())
  noisy["features"][~batch["mask"]] = 100.0
  out = model.apply(variables, batch, train=False)
  out_noisy = model.apply(variables, noisy, train=False)
  for key in ("vse", "rnn", "fwd", "bwd", "text"):
    np.testing.assert_allclose(np.asarray(out[key])[batch["mask"]],
                               np.asarray(out_noisy[key])[batch["mask"]], rtol=1e-5, atol=1e-6)


def test_text_is_normalised_sum_of_word_vectors():
  model = _model()
  batch = _batch([5])
  params = _init(model, batch)["params"]
  tokens = np.array([[3, 3, 7, 0], [0, 0, 0, 0]], np.int32)
  got = model.apply({"params": params}, tokens, method=OutfitModel.encode_text)
  table = np.asarray(params["seq_embedding"]["embedding"])
  want = 2 * table[3] + table[7]
  np.testing.assert_allclose(got[0], want / np.linalg.norm(want), rtol=1e-5)
  np.testing.assert_array_equal(got[1], 0.0)  # no words: no text vector


def test_init_is_uniform_within_scale_and_biases_zero():
  model = _model()
  params = _init(model, _batch([5]))["params"]
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    if name.endswith("['bias']"):
      assert np.all(np.asarray(x) == 0), name
    else:
      assert np.abs(np.asarray(x)).max() <= 0.08, name


def test_bfloat16_losses_close_to_float32():
  batch = _batch([5, 3, 4, 2], seed=1)
  f32, b16 = _model(dtype="float32"), _model(dtype="bfloat16")
  variables = _init(f32, batch)

  def total(model):
    out = model.apply(variables, batch, train=False)
    assert out["fwd"].dtype == (jnp.bfloat16 if model is b16 else jnp.float32)
    counts = np.sum(batch["tokens"] > 0, -1)
    return np.array([losses.next_item_loss(out["fwd"], out["rnn"], batch["lengths"], "forward"),
                     losses.next_item_loss(out["bwd"], out["rnn"], batch["lengths"], "backward"),
                     losses.vse_loss(out["vse"], out["text"], counts, batch["mask"])])

  np.testing.assert_allclose(total(b16), total(f32), rtol=2e-2, atol=2e-3)
