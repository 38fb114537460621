"""Which scoring rule a trained model uses, and its jitted Bi-LSTM predictions.

A Bi-LSTM model scores with the directions it was trained with (a zero loss
weight means that direction's LSTM never learned). With both LSTM losses off it
is the paper's VSE-only baseline, and a Siamese model has no LSTM at all: both
score pairwise by cosine (xthan/polyvore fill_in_blank.py, direction 0, and
fill_in_blank_siamese.py).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bilstm_jax.evaluation.errors import ConfigMismatchError


@dataclasses.dataclass(frozen=True)
class Rule:
  """How a model scores outfits and candidates."""
  kind: str  # "lstm" (next-item softmax) or "pairwise" (cosine of embeddings)
  forward: bool = False
  backward: bool = False
  embedding: str = "vse"  # the embedding a pairwise rule compares: "vse" or "rnn"
  name: str = "bilstm"  # what the report calls it: bilstm, forward, backward, vse, siamese

  @property
  def uses_lstm(self) -> bool:
    return self.kind == "lstm"


def rule_from_config(config: ml_collections.ConfigDict) -> Rule:
  """The scoring rule of a model trained under `config` (the whole config)."""
  kind = config.model.kind
  if kind == "siamese":
    return Rule("pairwise", embedding="vse", name="siamese")
  if kind != "bilstm":
    raise ConfigMismatchError(f"model.kind must be 'bilstm' or 'siamese', got {kind!r}")
  fwd, bwd = config.loss.forward_weight > 0, config.loss.backward_weight > 0
  if not (fwd or bwd):
    return Rule("pairwise", embedding="vse", name="vse")
  name = "bilstm" if fwd and bwd else ("forward" if fwd else "backward")
  return Rule("lstm", forward=fwd, backward=bwd, name=name)


def model_info(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The report's description of the evaluated model."""
  rule = rule_from_config(config)
  directions = {(True, True): "both", (True, False): "forward", (False, True): "backward",
                (False, False): "none"}[(rule.forward, rule.backward)]
  return {"kind": config.model.kind, "directions": directions,
          "vse": bool(config.model.kind == "bilstm" and config.loss.vse_weight > 0),
          "rule": rule.name}


class Predictor:
  """The model's next/previous item predictions, float32, from zero LSTM states."""

  def __init__(self, model: nn.Module, variables: Any):
    self.model = model
    self.variables = variables
    self._jit = jax.jit(self.apply)

  def apply(self, variables: Any, rnn: jax.Array, lengths: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
    """Pure form, to call inside other jitted functions: (fwd, bwd) [B, T, E] float32."""
    fwd, bwd = self.model.apply(variables, rnn, lengths, False, method=type(self.model).predict)
    return fwd.astype(jnp.float32), bwd.astype(jnp.float32)

  def __call__(self, rnn: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fwd, bwd) for [B, T, E] inputs; B is padded to a power of two to bound recompiles."""
    b = rnn.shape[0]
    padded = 1 << max(b - 1, 0).bit_length()
    if padded != b:
      rnn = np.concatenate([rnn, np.zeros((padded - b,) + rnn.shape[1:], rnn.dtype)])
      lengths = np.concatenate([lengths, np.ones(padded - b, np.int32)])
    fwd, bwd = self._jit(self.variables, jnp.asarray(rnn, jnp.float32),
                         jnp.asarray(lengths, jnp.int32))
    return np.asarray(fwd)[:b], np.asarray(bwd)[:b]


def check_variables(model: nn.Module, variables: Any, example: dict[str, np.ndarray]) -> None:
  """Raises ConfigMismatchError when `variables` do not fit `model` (another config's checkpoint).

  `example` is a one-outfit batch the model's __call__ accepts; only shapes are used.
  """
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))
  want = {jax.tree_util.keystr(k): v.shape
          for k, v in jax.tree_util.tree_leaves_with_path(abstract.get("params", {}))}
  have = {jax.tree_util.keystr(k): np.shape(v)
          for k, v in jax.tree_util.tree_leaves_with_path(variables.get("params", {}))}
  problems = [f"{k}: missing from the checkpoint" for k in want if k not in have]
  problems += [f"{k}: in the checkpoint but not in this config's model" for k in have if k not in want]
  problems += [f"{k}: shape {have[k]} in the checkpoint, {want[k]} under this config"
               for k in want if k in have and tuple(have[k]) != tuple(want[k])]
  if problems:
    shown = "\n  ".join(problems[:8])
    more = f"\n  ... {len(problems) - 8} more" if len(problems) > 8 else ""
    raise ConfigMismatchError(
        "The checkpoint's parameters do not fit the model of this config:\n  "
        f"{shown}{more}\nEvaluate with the config the checkpoint was trained with "
        "(the workdir's config.json).")
