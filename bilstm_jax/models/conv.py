"""2-D convolution whose filter gradient can run as cache-sized matmuls (fast on CPUs).

XLA's CPU backend computes a convolution's filter gradient dL/dW 4-8x slower
than the forward pass or the input gradient (measured per Inception layer; see
bench/README.md), and in a fine-tuning step it was the largest cost. dW is a
sum over the kernel's taps of X_tap^T dY, where X_tap is the (padded, strided)
input shifted by the tap. Done a few images at a time, so that each image's
slices stay in cache, these are plain matmuls at 2-5x XLA's speed. The forward
pass and the input gradient are always XLA's own.

Filter gradient modes (`FILTER_GRADS`): "matmul", "xla", and "auto", which is
"matmul" on a single CPU device and "xla" elsewhere: cuDNN and TPUs have fast
filter gradients (chosen when the step is compiled, `lax.platform_dependent`),
and with several devices the batch is sharded, so every step of the matmul
loop would need an all-reduce (XLA's CPU runtime can even deadlock on
collectives inside a loop). XLA's cost analysis counts the matmul path's loop
body once, so FLOPs are read from an "xla" build.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from bilstm_jax.errors import ConfigError

FILTER_GRADS = ("auto", "matmul", "xla")
_NHWC = ("NHWC", "HWIO", "NHWC")
_CACHE_BYTES = 1_500_000  # padded input bytes per loop step of the matmul dW (measured best)


def with_filter_grad(mode: str) -> Callable[..., jax.Array]:
  """A `lax.conv_general_dilated` (for `flax.linen.Conv`) whose dL/dW uses `mode`.

  Supports what Inception uses: NHWC inputs, HWIO kernels, no dilation, no groups.
  """
  if mode not in FILTER_GRADS:
    raise ConfigError(f"model.inception.filter_grad must be one of {FILTER_GRADS}, got {mode!r}")
  if mode == "matmul" and jax.device_count() > 1:
    raise ConfigError(f"model.inception.filter_grad='matmul' needs a single device "
                      f"({jax.device_count()} are visible); use 'auto' or 'xla'")

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None,
                           feature_group_count: int = 1, precision: Any = None) -> jax.Array:
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if numbers != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
      raise ValueError(f"only NHWC/HWIO convolutions are supported, got {dimension_numbers}")
    if any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
      raise ValueError("dilated convolutions are not supported")
    if feature_group_count != 1:
      raise ValueError("grouped convolutions are not supported")
    strides = tuple(window_strides)
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple(tuple(p) for p in padding)
    return _conv(lhs, rhs, strides, pads, precision, mode)

  return conv_general_dilated


def _xla_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, pads, precision, mode):
  del mode  # only the gradient differs
  return _xla_conv(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision, mode):
  return _xla_conv(x, w, strides, pads, precision), (x, w)


def _conv_bwd(strides, pads, precision, mode, residuals, dy):
  x, w = residuals
  dx, = jax.linear_transpose(lambda x: _xla_conv(x, w, strides, pads, precision), x)(dy)

  def xla_dw(x, dy):
    return jax.linear_transpose(lambda w: _xla_conv(x, w, strides, pads, precision), w)(dy)[0]

  matmul_dw = functools.partial(filter_gradient, kernel=w.shape[:2], strides=strides, pads=pads)
  if mode == "auto" and jax.device_count() == 1:
    dw = lax.platform_dependent(x, dy, cpu=matmul_dw, default=xla_dw)
  else:
    dw = (matmul_dw if mode == "matmul" else xla_dw)(x, dy)
  return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def filter_gradient(x: jax.Array, dy: jax.Array, kernel: tuple[int, int],
                    strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """dL/dW [kh, kw, C, D] of a NHWC convolution, from its input x and output gradient dy.

  A loop over groups of images that fit in cache; each step adds X_tap^T dY
  over the kernel's taps, accumulated in float32 and returned in x's dtype.
  """
  n, ho, wo, d = dy.shape
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  image_bytes = math.prod(xp.shape[1:]) * xp.dtype.itemsize
  fits = [g for g in range(1, n + 1) if n % g == 0 and g * image_bytes <= _CACHE_BYTES]
  group = max(fits, default=1)
  steps = n // group
  split = lambda a: a.reshape(steps, group, *a.shape[1:])

  def step(acc, xs):
    xg, dyg = xs
    dyg = dyg.reshape(-1, d)
    taps = []
    for a in range(kernel[0]):
      for b in range(kernel[1]):
        tap = lax.slice(xg, (0, a, b, 0),
                        (group, a + strides[0] * (ho - 1) + 1, b + strides[1] * (wo - 1) + 1,
                         xg.shape[3]), (1, *strides, 1))
        taps.append(lax.dot_general(tap.reshape(-1, tap.shape[3]), dyg,
                                    (((0,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32))
    return acc + jnp.stack(taps).reshape(acc.shape), None

  zero = jnp.zeros((*kernel, x.shape[3], d), jnp.float32)
  return lax.scan(step, zero, (split(xp), split(dy)))[0].astype(x.dtype)
