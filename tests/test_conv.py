"""Tests of the convolution with a matmul filter gradient, against NumPy and XLA's own."""

import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilstm_jax.errors import ConfigError
from bilstm_jax.models import conv
from tests.helpers import ROOT

NHWC = ("NHWC", "HWIO", "NHWC")
# (batch, size, in, out, kernel, stride, padding): Inception's kinds of layer, small.
LAYERS = [
    (3, 11, 3, 4, (3, 3), 2, "VALID"),  # the stem's first layer
    (4, 9, 5, 6, (3, 3), 1, "SAME"),
    (2, 7, 6, 3, (1, 7), 1, "SAME"),  # factorised 7x1 / 1x7
    (2, 7, 6, 3, (7, 1), 1, "SAME"),
    (5, 6, 8, 7, (1, 1), 1, "SAME"),
    (6, 9, 4, 5, (3, 3), 2, "VALID"),  # reductions
    (2, 8, 3, 2, (5, 5), 1, "SAME"),
]


def _numpy_filter_gradient(x, dy, kernel, stride, padding):
  """dL/dW of a cross-correlation, straight from its definition, in float64."""
  x, dy = x.astype(np.float64), dy.astype(np.float64)
  kh, kw = kernel
  if padding == "SAME":
    pads = []
    for size, k in zip(x.shape[1:3], kernel):
      total = max((-(-size // stride) - 1) * stride + k - size, 0)
      pads.append((total // 2, total - total // 2))
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
  dw = np.zeros((kh, kw, x.shape[3], dy.shape[3]))
  for a in range(kh):
    for b in range(kw):
      for i in range(dy.shape[1]):
        for j in range(dy.shape[2]):
          dw[a, b] += x[:, i * stride + a, j * stride + b, :].T @ dy[:, i, j, :]
  return dw


def _grads(mode, x, w, stride, padding, dy):
  f = lambda x, w: conv.with_filter_grad(mode)(x, w, (stride, stride), padding,
                                               dimension_numbers=NHWC)
  out, vjp = jax.vjp(f, x, w)
  return out, *vjp(dy)


@pytest.mark.parametrize("layer", LAYERS, ids=str)
def test_gradients_equal_numpy_and_xla(layer):
  n, size, cin, cout, kernel, stride, padding = layer
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, size, size, cin)).astype(np.float32)
  w = rng.standard_normal((*kernel, cin, cout)).astype(np.float32)
  xla = lambda x: jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                               dimension_numbers=NHWC)
  ref, xla_vjp = jax.vjp(xla, x)
  dy = rng.standard_normal(ref.shape).astype(np.float32)
  expected_dw = _numpy_filter_gradient(x, dy, kernel, stride, padding)
  results = {mode: _grads(mode, x, w, stride, padding, dy) for mode in conv.FILTER_GRADS}
  ref_dx, = xla_vjp(dy)
  for mode, (out, dx, dw) in results.items():
    np.testing.assert_array_equal(out, ref, err_msg=mode)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5, err_msg=mode)
    np.testing.assert_allclose(dw, expected_dw, rtol=1e-4, atol=1e-4, err_msg=mode)


def test_matmul_path_groups_images_to_fit_cache(monkeypatch):
  """Several loop steps (one image each) sum to the same gradient as one step."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((6, 9, 9, 4)).astype(np.float32)
  dy = rng.standard_normal((6, 9, 9, 5)).astype(np.float32)
  args = ((3, 3), (1, 1), ((1, 1), (1, 1)))
  one_step = conv.filter_gradient(x, dy, *args)
  monkeypatch.setattr(conv, "_CACHE_BYTES", 1)  # forces groups of one image: 6 steps
  np.testing.assert_allclose(conv.filter_gradient(x, dy, *args), one_step, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one_step, _numpy_filter_gradient(x, dy, (3, 3), 1, "SAME"),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", conv.FILTER_GRADS)
def test_bfloat16_gradients_keep_the_kernel_dtype(mode):
  x = jnp.ones((2, 8, 8, 3), jnp.bfloat16)
  w = jnp.ones((3, 3, 3, 4), jnp.bfloat16)
  grads = jax.jit(lambda x, w, dy: _grads(mode, x, w, 1, "SAME", dy))  # as in a train step
  out, dx, dw = grads(x, w, jnp.ones((2, 8, 8, 4), jnp.bfloat16))
  assert out.dtype == dx.dtype == dw.dtype == jnp.bfloat16
  assert float(dw[1, 1, 0, 0]) == 2 * 8 * 8  # every output pixel sees the centre tap


def test_flax_conv_uses_it_and_unsupported_settings_are_named():
  x = jnp.ones((1, 6, 6, 2))
  layer = nn.Conv(3, (3, 3), conv_general_dilated=conv.with_filter_grad("matmul"))
  variables = layer.init(jax.random.key(0), x)
  reference = nn.Conv(3, (3, 3)).apply(variables, x)
  np.testing.assert_allclose(layer.apply(variables, x), reference, rtol=1e-6)
  with pytest.raises(ValueError, match="dilated"):
    nn.Conv(3, (3, 3), kernel_dilation=2,
            conv_general_dilated=conv.with_filter_grad("auto")).init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match="model.inception.filter_grad must be one of"):
    conv.with_filter_grad("fast")


_SHARDED = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from bilstm_jax.models import conv

    try:
      conv.with_filter_grad("matmul")
    except ValueError as e:
      print("refused:", e)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 9, 9, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    loss = lambda x, w: jnp.sum(conv.with_filter_grad("auto")(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    dw = jax.jit(jax.grad(loss, argnums=1))(xs, w)
    np.testing.assert_allclose(dw, conv.filter_gradient(
        x, 2 * jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")),
        (3, 3), (1, 1), ((1, 1), (1, 1))), rtol=1e-4, atol=1e-3)
    print("sharded ok")
""")


def test_several_devices_use_xla_filter_gradients():
  """A sharded batch would put an all-reduce in every step of the matmul loop."""
  out = subprocess.run([sys.executable, "-c", _SHARDED], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert ("refused: model.inception.filter_grad='matmul' needs a single device (8 are visible)"
          in out.stdout)
  assert "sharded ok" in out.stdout
