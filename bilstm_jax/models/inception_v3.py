"""Inception v3 image encoder: a Flax port of TF-slim's `inception_v3_base`.

The network runs through Mixed_7c, then global average pooling and dropout
(only while the encoder trains), as in Han et al. 2017. Batch norm follows slim:
decay 0.9997, epsilon 1e-3, a learned offset and no learned scale; convolutions
have no bias (and a fast filter gradient on CPUs, see conv.py). Submodules
carry slim's names (e.g. Mixed_5b/Branch_1/Conv2d_0b_5x5), each holding a `conv` (kernel) and a `bn` (bias; mean and var
in `batch_stats`).

`load` reads ImageNet weights from timm's `inception_v3.tf_in1k` .safetensors
(a port of slim's inception_v3_2016_08_28 checkpoint) or from a Keras
`InceptionV3` .h5 weights file.
"""

import os
import re
from typing import Any, Callable, NamedTuple

import flax.linen as nn
from flax import traverse_util
import h5py
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from bilstm_jax.models.conv import with_filter_grad

BN_DECAY = 0.9997
BN_EPSILON = 1e-3
SUPPORTED_FORMATS = "timm .safetensors (inception_v3.tf_in1k) or Keras InceptionV3 .h5"


class Conv(NamedTuple):
  """A conv + batch norm + relu layer of the table below."""
  name: str  # slim scope
  timm: str  # timm module name inside its block
  depth: int  # output channels at depth multiplier 1
  kernel: tuple[int, int]
  stride: int = 1
  padding: str = "SAME"


AVG_POOL = "AvgPool_0a_3x3"  # 3x3, stride 1, SAME, padding excluded from the average
MAX_POOL = "MaxPool_1a_3x3"  # 3x3, stride 2, VALID

# The stem: convs and 3x3/2 VALID max pools (slim's MaxPool_3a_3x3, MaxPool_5a_3x3).
STEM = (
    Conv("Conv2d_1a_3x3", "Conv2d_1a_3x3", 32, (3, 3), 2, "VALID"),
    Conv("Conv2d_2a_3x3", "Conv2d_2a_3x3", 32, (3, 3), 1, "VALID"),
    Conv("Conv2d_2b_3x3", "Conv2d_2b_3x3", 64, (3, 3)),
    "MaxPool_3a_3x3",
    Conv("Conv2d_3b_1x1", "Conv2d_3b_1x1", 80, (1, 1), 1, "VALID"),
    Conv("Conv2d_4a_3x3", "Conv2d_4a_3x3", 192, (3, 3), 1, "VALID"),
    "MaxPool_5a_3x3",
)


def _reduce(name: str, timm: str, depth: int) -> Conv:
  """The stride-2 VALID 3x3 conv that halves a grid."""
  return Conv(name, timm, depth, (3, 3), 2, "VALID")


def _block_a(pool_depth: int, branch_1: tuple[str, str]) -> tuple:
  """Mixed_5b/5c/5d (timm InceptionA). `branch_1`: slim's names of that branch."""
  return (
      (Conv("Conv2d_0a_1x1", "branch1x1", 64, (1, 1)),),
      (Conv(branch_1[0], "branch5x5_1", 48, (1, 1)),
       Conv(branch_1[1], "branch5x5_2", 64, (5, 5))),
      (Conv("Conv2d_0a_1x1", "branch3x3dbl_1", 64, (1, 1)),
       Conv("Conv2d_0b_3x3", "branch3x3dbl_2", 96, (3, 3)),
       Conv("Conv2d_0c_3x3", "branch3x3dbl_3", 96, (3, 3))),
      (AVG_POOL, Conv("Conv2d_0b_1x1", "branch_pool", pool_depth, (1, 1))),
  )


def _block_c(c7: int) -> tuple:
  """Mixed_6b..6e (timm InceptionC): factorised 7x7 convs with c7 channels inside."""
  return (
      (Conv("Conv2d_0a_1x1", "branch1x1", 192, (1, 1)),),
      (Conv("Conv2d_0a_1x1", "branch7x7_1", c7, (1, 1)),
       Conv("Conv2d_0b_1x7", "branch7x7_2", c7, (1, 7)),
       Conv("Conv2d_0c_7x1", "branch7x7_3", 192, (7, 1))),
      (Conv("Conv2d_0a_1x1", "branch7x7dbl_1", c7, (1, 1)),
       Conv("Conv2d_0b_7x1", "branch7x7dbl_2", c7, (7, 1)),
       Conv("Conv2d_0c_1x7", "branch7x7dbl_3", c7, (1, 7)),
       Conv("Conv2d_0d_7x1", "branch7x7dbl_4", c7, (7, 1)),
       Conv("Conv2d_0e_1x7", "branch7x7dbl_5", 192, (1, 7))),
      (AVG_POOL, Conv("Conv2d_0b_1x1", "branch_pool", 192, (1, 1))),
  )


def _block_e(branch_1_3x1: str) -> tuple:
  """Mixed_7b/7c (timm InceptionE). A tuple of convs inside a branch runs them in
  parallel on the same input and concatenates them."""
  return (
      (Conv("Conv2d_0a_1x1", "branch1x1", 320, (1, 1)),),
      (Conv("Conv2d_0a_1x1", "branch3x3_1", 384, (1, 1)),
       (Conv("Conv2d_0b_1x3", "branch3x3_2a", 384, (1, 3)),
        Conv(branch_1_3x1, "branch3x3_2b", 384, (3, 1)))),
      (Conv("Conv2d_0a_1x1", "branch3x3dbl_1", 448, (1, 1)),
       Conv("Conv2d_0b_3x3", "branch3x3dbl_2", 384, (3, 3)),
       (Conv("Conv2d_0c_1x3", "branch3x3dbl_3a", 384, (1, 3)),
        Conv("Conv2d_0d_3x1", "branch3x3dbl_3b", 384, (3, 1)))),
      (AVG_POOL, Conv("Conv2d_0b_1x1", "branch_pool", 192, (1, 1))),
  )


# Mixed blocks in order: block name -> branches (Branch_0, Branch_1, ...), each a
# sequence of layers. Slim's own naming quirks (Mixed_5c Branch_1, Mixed_7b/7c
# Branch_1) are kept so that slim checkpoints map one to one.
MIXED = (
    ("Mixed_5b", _block_a(32, ("Conv2d_0a_1x1", "Conv2d_0b_5x5"))),
    ("Mixed_5c", _block_a(64, ("Conv2d_0b_1x1", "Conv_1_0c_5x5"))),
    ("Mixed_5d", _block_a(64, ("Conv2d_0a_1x1", "Conv2d_0b_5x5"))),
    ("Mixed_6a", (  # timm InceptionB
        (_reduce("Conv2d_1a_1x1", "branch3x3", 384),),
        (Conv("Conv2d_0a_1x1", "branch3x3dbl_1", 64, (1, 1)),
         Conv("Conv2d_0b_3x3", "branch3x3dbl_2", 96, (3, 3)),
         _reduce("Conv2d_1a_1x1", "branch3x3dbl_3", 96)),
        (MAX_POOL,),
    )),
    ("Mixed_6b", _block_c(128)),
    ("Mixed_6c", _block_c(160)),
    ("Mixed_6d", _block_c(160)),
    ("Mixed_6e", _block_c(192)),
    ("Mixed_7a", (  # timm InceptionD
        (Conv("Conv2d_0a_1x1", "branch3x3_1", 192, (1, 1)),
         _reduce("Conv2d_1a_3x3", "branch3x3_2", 320)),
        (Conv("Conv2d_0a_1x1", "branch7x7x3_1", 192, (1, 1)),
         Conv("Conv2d_0b_1x7", "branch7x7x3_2", 192, (1, 7)),
         Conv("Conv2d_0c_7x1", "branch7x7x3_3", 192, (7, 1)),
         _reduce("Conv2d_1a_3x3", "branch7x7x3_4", 192)),
        (MAX_POOL,),
    )),
    ("Mixed_7b", _block_e("Conv2d_0b_3x1")),
    ("Mixed_7c", _block_e("Conv2d_0c_3x1")),
)


def depth_fn(depth_multiplier: float, min_depth: int) -> Callable[[int], int]:
  """Slim's depth(d) = max(int(d * depth_multiplier), min_depth)."""
  if depth_multiplier <= 0:
    raise ValueError(f"depth_multiplier must be > 0, got {depth_multiplier}.")
  return lambda d: max(int(d * depth_multiplier), min_depth)


def _layer_convs(layer) -> tuple[Conv, ...]:
  """The convs of one table layer (none for a pool, two for a parallel pair)."""
  if isinstance(layer, Conv):
    return (layer,)
  if isinstance(layer, tuple):
    return layer
  return ()


def output_dim(depth_multiplier: float = 1.0, min_depth: int = 16) -> int:
  """Channels of the pooled features (2048 at depth multiplier 1)."""
  depth = depth_fn(depth_multiplier, min_depth)
  _, branches = MIXED[-1]
  return sum(depth(c.depth) for branch in branches for c in _layer_convs(branch[-1]))


def conv_layers() -> list[tuple[tuple[str, ...], str, Conv]]:
  """Every conv in creation order (= Keras layer order): (Flax path, timm name, spec)."""
  out = [((c.name,), c.timm, c) for c in STEM if isinstance(c, Conv)]
  for block, branches in MIXED:
    for b, branch in enumerate(branches):
      for layer in branch:
        for c in _layer_convs(layer):
          out.append(((block, f"Branch_{b}", c.name), f"{block}.{c.timm}", c))
  return out


class ConvBN(nn.Module):
  """Slim's conv2d with batch norm: conv (no bias), batch norm (offset, no scale), relu."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: str = "SAME"
  dtype: Any = jnp.float32
  bn_decay: float = BN_DECAY
  filter_grad: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
    x = nn.Conv(
        self.features, self.kernel, strides=self.stride, padding=self.padding,
        use_bias=False, dtype=self.dtype,
        conv_general_dilated=with_filter_grad(self.filter_grad),
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal"),
        name="conv")(x)
    x = nn.BatchNorm(
        use_running_average=not train, momentum=self.bn_decay, epsilon=BN_EPSILON,
        use_scale=False, use_bias=True, use_fast_variance=False, dtype=self.dtype,
        name="bn")(x, mask=None if mask is None else mask[:, None, None, None])
    return nn.relu(x)


class Width(NamedTuple):
  """What every conv layer of one network shares: its width and how it computes."""
  depth_multiplier: float
  min_depth: int
  dtype: Any
  bn_decay: float
  filter_grad: str

  def conv_bn(self, c: Conv) -> ConvBN:
    """Layer `c` at this width, named as in slim (bound to the module that calls this)."""
    depth = depth_fn(self.depth_multiplier, self.min_depth)(c.depth)
    return ConvBN(depth, c.kernel, c.stride, c.padding, self.dtype, self.bn_decay,
                  self.filter_grad, name=c.name)


class Branch(nn.Module):
  """One branch of a mixed block: its layers in sequence."""
  layers: tuple
  width: Width

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
    for layer in self.layers:
      if layer == AVG_POOL:
        x = nn.avg_pool(x, (3, 3), padding="SAME", count_include_pad=False)
      elif layer == MAX_POOL:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
      elif isinstance(layer, Conv):
        x = self.width.conv_bn(layer)(x, train, mask)
      else:
        x = jnp.concatenate([self.width.conv_bn(c)(x, train, mask) for c in layer], axis=-1)
    return x


class Mixed(nn.Module):
  """A mixed block: its branches side by side, concatenated along channels."""
  branches: tuple
  width: Width

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
    return jnp.concatenate([Branch(branch, self.width, name=f"Branch_{b}")(x, train, mask)
                            for b, branch in enumerate(self.branches)], axis=-1)


class InceptionV3(nn.Module):
  """Slim's inception_v3_base through Mixed_7c, global average pool, dropout.

  Inputs of any size >= 75 pixels work (75 px reaches Mixed_7c at 1x1).
  """
  depth_multiplier: float = 1.0
  min_depth: int = 16
  keep_prob: float = 0.8
  dtype: Any = jnp.float32
  bn_decay: float = BN_DECAY  # running averages' decay (slim: 0.9997)
  filter_grad: str = "auto"  # how convolutions compute dL/dW (models/conv.py FILTER_GRADS)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool,
               mask: jax.Array | None = None) -> jax.Array:
    """Pooled features [N, output_dim] (float32) of images x [N, H, W, 3] in [-1, 1].

    When `train`, batch norm normalises with (and updates `batch_stats` from) the
    statistics of the images where `mask` is True (at least one must be), and
    dropout is active (rng 'dropout'); otherwise the running averages are used
    and there is no dropout. Masked-out images still get (meaningless) outputs.
    """
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 75:
      raise ValueError(f"InceptionV3 wants images [N, H, W, 3] with H, W >= 75; got {x.shape}.")
    width = Width(self.depth_multiplier, self.min_depth, self.dtype, self.bn_decay,
                  self.filter_grad)
    x = x.astype(self.dtype)
    for layer in STEM:
      if isinstance(layer, Conv):
        x = width.conv_bn(layer)(x, train, mask)
      else:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    for block, branches in MIXED:
      x = Mixed(branches, width, name=block)(x, train, mask)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dropout(rate=1.0 - self.keep_prob, deterministic=not train)(x)


# --- Pretrained weights --------------------------------------------------------

_TIMM_IGNORED = ("AuxLogits.", "fc.")  # auxiliary head and classifier: not in the encoder
_KERAS_CONV = re.compile(r"conv2d(?:_(\d+))?$")
_KERAS_BN = re.compile(r"batch_normalization(?:_(\d+))?$")
_KERAS_IGNORED = ("predictions",)  # the classifier of include_top=True files


class _Source(NamedTuple):
  """One tensor of a weights file, bound for one Flax variable."""
  name: str  # the tensor's name in the file
  value: np.ndarray
  transpose: tuple[int, ...] | None = None  # file layout -> Flax layout


def load(variables: dict, path: str | os.PathLike) -> dict:
  """Returns `variables` of InceptionV3 (depth multiplier 1) with a file's weights.

  Args:
    variables: the encoder's own {'params': ..., 'batch_stats': ...} (arrays or
      jax.ShapeDtypeStruct, e.g. from jax.eval_shape).
    path: timm `inception_v3.tf_in1k` .safetensors, or a Keras InceptionV3 .h5
      weights file (with or without the top).

  Returns:
    The same structure filled with the file's weights, in the variables' dtypes.

  Raises:
    ValueError: the network is not the full one, or the file is unreadable, of
      an unknown format, or has a missing, extra or mis-shaped tensor.
  """
  path = os.fspath(path)
  flat = traverse_util.flatten_dict(
      {k: variables[k] for k in ("params", "batch_stats") if k in variables})
  _check_structure(flat)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"Inception weights file {path} does not exist; expected {SUPPORTED_FORMATS}.")
  if path.endswith(".safetensors"):
    sources = _read_timm(path)
  elif path.endswith((".h5", ".hdf5")):
    sources = _read_keras(path)
  else:
    raise ValueError(f"Unknown Inception weights format: {path}; expected {SUPPORTED_FORMATS}.")
  loaded = {}
  for key, target in flat.items():
    src = sources[key]
    want = target.shape
    if src.transpose is not None:  # compare in the file's own layout
      want = tuple(want[i] for i in np.argsort(src.transpose))
    if src.value.shape != tuple(want):
      raise ValueError(
          f"Tensor {src.name} in {path} has shape {src.value.shape}; expected {tuple(want)}.")
    value = src.value if src.transpose is None else src.value.transpose(src.transpose)
    loaded[key] = jnp.asarray(value, dtype=target.dtype)
  out = dict(variables)
  out.update(traverse_util.unflatten_dict(loaded))
  return out


def _targets(path: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
  """The Flax variables of one conv layer by role."""
  return {"kernel": ("params", *path, "conv", "kernel"),
          "bias": ("params", *path, "bn", "bias"),
          "mean": ("batch_stats", *path, "bn", "mean"),
          "var": ("batch_stats", *path, "bn", "var")}


def _check_structure(flat: dict) -> None:
  """Raises unless `flat` holds exactly the variables of the full network."""
  expected = {k for path, _, _ in conv_layers() for k in _targets(path).values()}
  missing, extra = sorted(expected - flat.keys()), sorted(flat.keys() - expected)
  if missing or extra:
    names = ["/".join(k) for k in (missing or extra)[:3]]
    raise ValueError(
        f"These are not InceptionV3 variables ({'missing' if missing else 'unexpected'}: "
        f"{', '.join(names)}); pass the encoder's own {{'params', 'batch_stats'}}.")
  for path, _, conv in conv_layers():
    channels = flat[_targets(path)["kernel"]].shape[-1]
    if channels != conv.depth:
      raise ValueError(
          f"Pretrained Inception v3 weights exist only for the full network "
          f"(depth_multiplier=1, min_depth<=32), but {'/'.join(path)} has {channels} "
          f"channels instead of {conv.depth}: set model.inception.depth_multiplier=1 "
          "or leave model.inception.weights empty.")


def _check_scale(name: str, value: np.ndarray, shape: tuple[int, ...], path: str) -> None:
  """Slim's batch norm has no scale: a file's scale must be all ones."""
  if value.shape != shape:
    raise ValueError(f"Tensor {name} in {path} has shape {value.shape}; expected {shape}.")
  if value.size and np.max(np.abs(value.astype(np.float64) - 1.0)) > 1e-6:
    raise ValueError(
        f"Batch-norm scale {name} in {path} is not all ones, but the slim Inception v3 "
        "has no scale: use weights ported from TF-slim (timm inception_v3.tf_in1k) "
        "or Keras InceptionV3.")


def _read_timm(path: str) -> dict[tuple[str, ...], _Source]:
  """Reads timm's naming: <module>.conv.weight (OIHW), <module>.bn.{weight,bias,...}."""
  try:
    with safe_open(path, framework="np") as f:
      tensors = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # safetensors raises its own error types
    raise ValueError(f"Cannot read {path} as safetensors ({e}); expected {SUPPORTED_FORMATS}.") from e
  sources, used = {}, set()
  for path_, timm, _ in conv_layers():
    names = {"kernel": f"{timm}.conv.weight", "bias": f"{timm}.bn.bias",
             "mean": f"{timm}.bn.running_mean", "var": f"{timm}.bn.running_var"}
    for role, key in _targets(path_).items():
      name = names[role]
      if name not in tensors:
        raise ValueError(f"Tensor {name} is missing from {path}.")
      sources[key] = _Source(name, tensors[name], (2, 3, 1, 0) if role == "kernel" else None)
    scale = f"{timm}.bn.weight"
    if scale not in tensors:
      raise ValueError(f"Tensor {scale} is missing from {path}.")
    _check_scale(scale, tensors[scale], tensors[names["bias"]].shape, path)
    used.update(names.values(), [scale])
  extra = sorted(k for k in tensors.keys() - used
                 if not k.startswith(_TIMM_IGNORED) and not k.endswith(".num_batches_tracked"))
  if extra:
    raise ValueError(f"Unexpected tensor {extra[0]} in {path} ({len(extra)} unexpected in all).")
  return sources


def _h5_names(group, attr: str) -> list[str]:
  """A Keras HDF5 name list (stored in chunks attr0, attr1, ... when long)."""
  if attr in group.attrs:
    values = list(group.attrs[attr])
  else:
    values, i = [], 0
    while f"{attr}{i}" in group.attrs:
      values.extend(group.attrs[f"{attr}{i}"])
      i += 1
  return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_keras(path: str) -> dict[tuple[str, ...], _Source]:
  """Reads a Keras 2 HDF5 weights file of keras.applications.InceptionV3.

  Its conv2d_N / batch_normalization_N layers, sorted by N, follow the creation
  order of the model, which is the order of `conv_layers()`.
  """
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"Cannot read {path} as HDF5 ({e}); expected {SUPPORTED_FORMATS}.") from e
  with f:
    root = f["model_weights"] if "model_weights" in f else f
    if not _h5_names(root, "layer_names"):
      raise ValueError(
          f"{path} is not a Keras 2 HDF5 weights file (no 'layer_names'); expected "
          f"{SUPPORTED_FORMATS} as saved by keras.applications (Keras 3 .weights.h5 is not read).")
    convs, bns = [], []
    for layer in _h5_names(root, "layer_names"):
      weights = {}
      for w in _h5_names(root[layer], "weight_names"):
        short = w.split("/")[-1].split(":")[0]
        weights[short] = (f"{layer}/{short}", np.asarray(root[layer][w]))
      if not weights or layer in _KERAS_IGNORED:
        continue
      for pattern, found in ((_KERAS_CONV, convs), (_KERAS_BN, bns)):
        if m := pattern.match(layer):
          found.append((int(m.group(1) or 0), layer, weights))
          break
      else:
        raise ValueError(f"Unexpected layer {layer} with weights in {path}.")
  layers = conv_layers()
  for kind, found in (("conv2d", convs), ("batch_normalization", bns)):
    if len(found) != len(layers):
      raise ValueError(f"{path} has {len(found)} {kind} layers with weights; Keras InceptionV3 "
                       f"has {len(layers)} (tensors missing or extra).")
    found.sort(key=lambda t: t[0])
  sources = {}
  for (path_, _, _), (_, conv, cw), (_, bn, bw) in zip(layers, convs, bns):
    roles = ((cw, conv, {"kernel": "kernel"}),
             (bw, bn, {"bias": "beta", "mean": "moving_mean", "var": "moving_variance"}))
    targets = _targets(path_)
    for weights, layer, names in roles:
      for role, short in names.items():
        if short not in weights:
          raise ValueError(f"Tensor {layer}/{short} is missing from {path}.")
        sources[targets[role]] = _Source(*weights[short])
      if "gamma" in weights and layer == bn:
        _check_scale(*weights["gamma"], weights["beta"][1].shape, path)
      extra = sorted(weights.keys() - set(names.values()) - ({"gamma"} if layer == bn else set()))
      if extra:
        raise ValueError(f"Unexpected tensor {layer}/{extra[0]} in {path}.")
  return sources
