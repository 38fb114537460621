"""Tests of the Inception v3 encoder: structure, batch-norm/mask semantics, weight loading."""

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from bilstm_jax.models import inception_v3 as inc

TINY = dict(depth_multiplier=0.1, min_depth=8)


def _abstract(model: inc.InceptionV3, size: int = 75, batch: int = 1) -> tuple:
  """Output and variable shapes, without allocating or computing anything."""
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False), x)


def _abstract_variables(model: inc.InceptionV3, size: int = 75) -> dict:
  return _abstract(model, size)[1]


def _random_flat(abstract: dict, seed: int = 0) -> dict:
  """Random values (numpy, float32) for every variable, keyed by flattened path.

  (Flax's own init compiles slowly on CPU; tests do not need it.)
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for key, leaf in traverse_util.flatten_dict(abstract).items():
    if key[-1] == "var":
      flat[key] = rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    else:
      scale = 0.3 if key[-1] == "kernel" else 0.1
      flat[key] = (scale * rng.standard_normal(leaf.shape)).astype(np.float32)
  return flat


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _images(n: int, size: int = 75, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def full():
  """Abstract full-network variables and random values for them."""
  abstract = _abstract_variables(inc.InceptionV3())
  return abstract, _random_flat(abstract, seed=5)


# --- Structure -----------------------------------------------------------------


def test_parameter_counts_match_keras_inception_v3_without_top(full):
  variables, _ = full
  assert _count(variables["params"]) == 21_768_352  # conv kernels + batch-norm offsets
  assert _count(variables["batch_stats"]) == 34_432  # moving means and variances
  flat = traverse_util.flatten_dict(variables["params"])
  assert sum(k[-1] == "kernel" for k in flat) == 94
  assert not any(k[-1] == "scale" for k in flat)  # slim's batch norm has no scale
  assert flat[("Mixed_5c", "Branch_1", "Conv_1_0c_5x5", "conv", "kernel")].shape == (5, 5, 48, 64)
  assert flat[("Mixed_6b", "Branch_1", "Conv2d_0b_1x7", "conv", "kernel")].shape == (1, 7, 128, 128)
  assert flat[("Mixed_7c", "Branch_1", "Conv2d_0c_3x1", "conv", "kernel")].shape == (3, 1, 384, 384)


@pytest.mark.parametrize("depth_multiplier,min_depth,size", [
    (1.0, 16, 299), (1.0, 16, 75), (0.5, 16, 150), (0.25, 16, 96), (0.1, 8, 75)])
def test_output_shape(depth_multiplier, min_depth, size):
  model = inc.InceptionV3(depth_multiplier, min_depth, dtype=jnp.bfloat16)
  out, variables = _abstract(model, size, batch=3)
  assert out.shape == (3, inc.output_dim(depth_multiplier, min_depth))
  assert out.dtype == jnp.float32  # float32 features whatever the compute dtype
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_output_dim():
  assert inc.output_dim() == 2048
  assert inc.output_dim(0.25) == 80 + 2 * 96 + 2 * 96 + 48
  assert inc.output_dim(0.1, 8) == 32 + 4 * 38 + 19
  with pytest.raises(ValueError, match="depth_multiplier"):
    inc.output_dim(0.0)


def test_images_below_75_pixels_are_rejected():
  model = inc.InceptionV3(**TINY)
  with pytest.raises(ValueError, match="75"):
    _abstract_variables(model, 74)


# --- Batch norm, mask and dropout ------------------------------------------------


def test_train_mode_masks_batch_statistics_and_applies_dropout():
  model = inc.InceptionV3(**TINY)
  variables = traverse_util.unflatten_dict(_random_flat(_abstract_variables(model, 96)))
  real = _images(3, size=96, seed=1)
  junk = 50.0 * _images(2, size=96, seed=2)  # padding images: nothing of them may leak
  mask = np.array([True, True, True, False, False])

  @jax.jit
  def train(variables, x, key):
    return model.apply(variables, x, train=True, mask=mask, rngs={"dropout": key},
                       mutable=["batch_stats"])

  key = jax.random.key(3)
  out, stats = train(variables, np.concatenate([real, junk]), key)
  out_2, stats_2 = train(variables, np.concatenate([real, -junk[::-1]]), key)
  np.testing.assert_allclose(out[:3], out_2[:3], rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), stats, stats_2)
  # Every running average moved (by how much: test_conv_bn_relu_matches_numpy).
  jax.tree.map(lambda old, new: np.testing.assert_(np.any(old != new)),
               variables["batch_stats"], stats["batch_stats"])
  # Dropout (keep 0.8): another key drops other features and scales none differently.
  out, out_2 = (np.asarray(o[:3]) for o in (out, train(variables, np.concatenate([real, junk]),
                                                         jax.random.key(4))[0]))
  alive = (out != 0) | (out_2 != 0)  # features that relu did not zero
  assert 0.6 < (out != 0)[alive].mean() < 0.95
  both = (out != 0) & (out_2 != 0)
  assert np.any(both) and np.any((out != 0) != (out_2 != 0))
  np.testing.assert_allclose(out[both], out_2[both], rtol=1e-5)


def test_eval_mode_is_deterministic_and_uses_running_averages():
  model = inc.InceptionV3(**TINY)
  variables = traverse_util.unflatten_dict(_random_flat(_abstract_variables(model)))
  x = _images(2, seed=4)
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))  # no rng, nothing mutable
  first, second = evaluate(variables, x), evaluate(variables, x)
  np.testing.assert_array_equal(first, second)
  assert np.all(np.isfinite(first)) and np.any(np.asarray(first) > 0)


# --- Weight files ------------------------------------------------------------------


def _timm_tensors(flat: dict) -> dict:
  """The tensors of a timm inception_v3.tf_in1k file holding `flat`'s values."""
  tensors = {}
  for path, timm, _ in inc.conv_layers():
    get = lambda *k: flat[(k[0], *path, *k[1:])]
    # (safetensors writes the raw buffer: a transposed view must be made contiguous)
    kernel = get("params", "conv", "kernel").transpose(3, 2, 0, 1)
    tensors[f"{timm}.conv.weight"] = np.ascontiguousarray(kernel)
    bias = get("params", "bn", "bias")
    tensors[f"{timm}.bn.weight"] = np.ones_like(bias)
    tensors[f"{timm}.bn.bias"] = bias
    tensors[f"{timm}.bn.running_mean"] = get("batch_stats", "bn", "mean")
    tensors[f"{timm}.bn.running_var"] = get("batch_stats", "bn", "var")
    tensors[f"{timm}.bn.num_batches_tracked"] = np.array(7, np.int64)
  tensors["AuxLogits.conv0.conv.weight"] = np.zeros((128, 768, 1, 1), np.float32)
  tensors["fc.weight"] = np.zeros((10, 2048), np.float32)
  tensors["fc.bias"] = np.zeros((10,), np.float32)
  return tensors


def _write_keras(path, flat: dict, first: int = 1, top: bool = False,
                 full_model: bool = False, edit=None) -> None:
  """A Keras 2 HDF5 weights file of InceptionV3 holding `flat`'s values.

  Layers are conv2d_N / batch_normalization_N numbered from `first` in creation
  order, and listed in a shuffled order (Keras lists them topologically).
  """
  layers = [("input_1", {})]
  for i, (path_, _, _) in enumerate(inc.conv_layers()):
    n = first + i
    suffix = f"_{n}" if n else ""
    get = lambda *k: flat[(k[0], *path_, *k[1:])]
    layers.append((f"conv2d{suffix}", {"kernel": get("params", "conv", "kernel")}))
    layers.append((f"batch_normalization{suffix}", {
        "beta": get("params", "bn", "bias"), "moving_mean": get("batch_stats", "bn", "mean"),
        "moving_variance": get("batch_stats", "bn", "var")}))
    layers.append((f"activation{suffix}", {}))
  if top:
    layers.append(("predictions", {"kernel": np.zeros((2048, 10), np.float32),
                                   "bias": np.zeros((10,), np.float32)}))
  layers = dict(layers)
  if edit:
    edit(layers)
  order = np.random.default_rng(6).permutation(len(layers))
  names = [list(layers)[i] for i in order]
  with h5py.File(path, "w") as f:
    root = f.create_group("model_weights") if full_model else f
    root.attrs["layer_names"] = [n.encode() for n in names]
    for name in names:
      group = root.create_group(name)
      group.attrs["weight_names"] = [f"{name}/{w}:0".encode() for w in layers[name]]
      for w, value in layers[name].items():
        group.create_dataset(f"{name}/{w}:0", data=value)


def _assert_loaded(loaded: dict, flat: dict) -> None:
  got = traverse_util.flatten_dict(loaded)
  assert got.keys() == flat.keys()
  for key, value in flat.items():
    assert got[key].dtype == jnp.float32
    np.testing.assert_array_equal(got[key], value, err_msg="/".join(key))


def test_timm_round_trip(full, tmp_path):
  abstract, flat = full
  path = tmp_path / "inception_v3.tf_in1k.safetensors"
  save_file(_timm_tensors(flat), str(path))
  loaded = inc.load(abstract, path)
  _assert_loaded(loaded, flat)
  out = jax.jit(lambda v, x: inc.InceptionV3().apply(v, x, train=False))(loaded, _images(1))
  assert out.shape == (1, 2048) and np.all(np.isfinite(out))


@pytest.mark.parametrize("first,top,full_model", [(1, False, False), (0, True, True), (95, True, False)])
def test_keras_round_trip(full, tmp_path, first, top, full_model):
  abstract, flat = full
  path = tmp_path / "inception_v3.h5"
  _write_keras(path, flat, first, top, full_model)
  _assert_loaded(inc.load(abstract, path), flat)


def test_conv_bn_relu_matches_numpy(full, tmp_path):
  """Conv2d_1a_3x3 with loaded timm weights against an independent NumPy computation."""
  abstract, flat = full
  tensors = _timm_tensors(flat)
  path = tmp_path / "w.safetensors"
  save_file(tensors, str(path))
  loaded = inc.load(abstract, path)
  layer = inc.ConvBN(32, (3, 3), 2, "VALID")
  variables = {c: loaded[c]["Conv2d_1a_3x3"] for c in ("params", "batch_stats")}
  x = _images(3, size=9, seed=7)
  w = tensors["Conv2d_1a_3x3.conv.weight"]  # OIHW, as in the file
  conv = np.zeros((3, 4, 4, 32))
  for i in range(4):
    for j in range(4):
      patch = x[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]  # N, kh, kw, C
      conv[:, i, j, :] = np.einsum("nhwc,ochw->no", patch, w)
  mean, var = tensors["Conv2d_1a_3x3.bn.running_mean"], tensors["Conv2d_1a_3x3.bn.running_var"]
  bias = tensors["Conv2d_1a_3x3.bn.bias"]
  expected = np.maximum((conv - mean) / np.sqrt(var + 1e-3) + bias, 0)
  got = layer.apply(variables, x, False, None)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

  # Training: statistics of the masked-in images only; running averages decay 0.9997.
  mask = np.array([True, False, True])
  got, updated = layer.apply(variables, x, True, mask, mutable=["batch_stats"])
  real = conv[mask]
  batch_mean, batch_var = real.mean(axis=(0, 1, 2)), real.var(axis=(0, 1, 2))
  expected = np.maximum((conv - batch_mean) / np.sqrt(batch_var + 1e-3) + bias, 0)
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(updated["batch_stats"]["bn"]["mean"],
                             0.9997 * mean + 0.0003 * batch_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(updated["batch_stats"]["bn"]["var"],
                             0.9997 * var + 0.0003 * batch_var, rtol=1e-5, atol=1e-6)


def test_timm_errors(full, tmp_path):
  abstract, flat = full
  good = _timm_tensors(flat)
  path = tmp_path / "bad.safetensors"

  def load_with(tensors):
    save_file(tensors, str(path))
    inc.load(abstract, path)

  name = "Mixed_6b.branch7x7dbl_3.bn.running_mean"
  with pytest.raises(ValueError, match=f"{name} is missing from .*bad.safetensors"):
    load_with({k: v for k, v in good.items() if k != name})
  with pytest.raises(ValueError, match="Unexpected tensor Mixed_5b.branch1x1.conv.bias in .*bad"):
    load_with({**good, "Mixed_5b.branch1x1.conv.bias": np.zeros(64, np.float32)})
  name = "Mixed_7a.branch7x7x3_2.conv.weight"
  with pytest.raises(ValueError, match=rf"{name} in .*bad.safetensors has shape \(192, 192, 7, 1\); "
                     r"expected \(192, 192, 1, 7\)"):
    load_with({**good, name: good[name].transpose(0, 1, 3, 2).copy()})
  name = "Conv2d_4a_3x3.bn.weight"
  with pytest.raises(ValueError, match=f"{name} in .*bad.safetensors is not all ones"):
    load_with({**good, name: np.full(192, 1.5, np.float32)})
  path.write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="Cannot read .*bad.safetensors.*Keras"):
    inc.load(abstract, path)


def test_keras_errors(full, tmp_path):
  abstract, flat = full
  path = tmp_path / "bad.h5"

  def load_with(edit):
    _write_keras(path, flat, edit=edit)
    inc.load(abstract, path)

  with pytest.raises(ValueError, match="93 conv2d layers"):
    load_with(lambda layers: layers.pop("conv2d_94"))
  with pytest.raises(ValueError, match=r"batch_normalization_7/moving_variance is missing"):
    load_with(lambda layers: layers["batch_normalization_7"].pop("moving_variance"))
  with pytest.raises(ValueError, match="Unexpected tensor conv2d_3/bias"):
    load_with(lambda layers: layers["conv2d_3"].update(bias=np.zeros(64, np.float32)))
  with pytest.raises(ValueError, match="Unexpected layer dense_1"):
    load_with(lambda layers: layers.update(dense_1={"kernel": np.zeros((2, 2), np.float32)}))
  with pytest.raises(ValueError, match=r"conv2d_1/kernel in .*bad.h5 has shape \(3, 3, 3, 16\)"):
    load_with(lambda layers: layers["conv2d_1"].update(kernel=np.zeros((3, 3, 3, 16), np.float32)))
  with h5py.File(path, "w") as f:
    f["x"] = np.zeros(3)
  with pytest.raises(ValueError, match="bad.h5 is not a Keras 2 HDF5 weights file"):
    inc.load(abstract, path)
  path.write_bytes(b"not hdf5")
  with pytest.raises(ValueError, match="Cannot read .*bad.h5"):
    inc.load(abstract, path)


def test_load_rejects_other_networks_and_formats(full, tmp_path):
  abstract, _ = full
  small = _abstract_variables(inc.InceptionV3(depth_multiplier=0.5))
  with pytest.raises(ValueError, match="only for the full network.*depth_multiplier=1"):
    inc.load(small, tmp_path / "any.safetensors")
  with pytest.raises(ValueError, match="not InceptionV3 variables"):
    inc.load({"params": abstract["params"]}, tmp_path / "any.safetensors")
  with pytest.raises(FileNotFoundError, match="missing.safetensors"):
    inc.load(abstract, tmp_path / "missing.safetensors")
  (tmp_path / "weights.pt").write_bytes(b"")
  with pytest.raises(ValueError, match=r"Unknown .* format: .*weights\.pt; expected timm \.safetensors"):
    inc.load(abstract, tmp_path / "weights.pt")
