"""Item embeddings of a split (han2017.md section 5, feature extraction).

For every item: its VSE embedding (`image_feat` in the original) and its
LSTM-space embedding (`image_rnn_feat`), keyed by item id, in float32.
"""

import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from bilstm_jax.evaluation import report
from bilstm_jax.evaluation.errors import ConfigMismatchError, EvaluationError, UnknownItemError

_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class ItemFeatures:
  """Embeddings of a set of items, row i belonging to ids[i]."""
  ids: np.ndarray  # [N] str
  vse: np.ndarray  # [N, E] float32, visual-semantic embedding (not normalised)
  rnn: np.ndarray  # [N, E] float32, LSTM input/target space
  categories: np.ndarray  # [N] int32 category id, -1 where unknown
  positions: np.ndarray  # [N] float32 relative position in its outfit (0 first, 1 last), NaN unknown

  def __post_init__(self):
    n = len(self.ids)
    for name in ("vse", "rnn"):
      a = getattr(self, name)
      if a.ndim != 2 or a.shape[0] != n:
        raise EvaluationError(f"ItemFeatures.{name} must be [{n}, E], got {a.shape}")
    if len(self.categories) != n or len(self.positions) != n:
      raise EvaluationError("ItemFeatures.categories/positions must have one entry per id")
    if len(self.index) != n:
      seen, dup = set(), None
      for i in self.ids:
        if i in seen:
          dup = i
          break
        seen.add(i)
      raise EvaluationError(f"Item id {dup!r} appears twice in the feature table")

  @functools.cached_property
  def index(self) -> dict[str, int]:
    return {str(i): r for r, i in enumerate(self.ids)}

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def dim(self) -> int:
    return self.rnn.shape[1]

  def rows(self, item_ids: Iterable[str]) -> np.ndarray:
    """Row numbers of `item_ids`; UnknownItemError names any that are absent."""
    item_ids = list(item_ids)
    missing = [i for i in item_ids if i not in self.index]
    if missing:
      raise UnknownItemError(missing)
    return np.array([self.index[i] for i in item_ids], np.int64)

  def save(self, path: str | os.PathLike, **meta: Any) -> None:
    """Writes an .npz (`meta` values, e.g. the checkpoint step, are stored alongside)."""
    report.write_atomically(path, lambda f: np.savez(
        f, ids=self.ids.astype(str), vse=self.vse, rnn=self.rnn, categories=self.categories,
        positions=self.positions, version=_FORMAT_VERSION,
        **{f"meta_{k}": v for k, v in meta.items()}))

  @classmethod
  def load(cls, path: str | os.PathLike) -> tuple["ItemFeatures", dict[str, Any]]:
    """Reads what `save` wrote: (features, meta)."""
    try:
      with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as z:
        if int(z["version"]) != _FORMAT_VERSION:
          raise ConfigMismatchError(f"{path}: feature file version {int(z['version'])}, expected "
                                    f"{_FORMAT_VERSION}; delete it to extract again")
        feats = cls(ids=z["ids"], vse=z["vse"], rnn=z["rnn"], categories=z["categories"],
                    positions=z["positions"])
        meta = {k[5:]: z[k].item() for k in z.files if k.startswith("meta_")}
    except (OSError, KeyError, ValueError) as e:
      if isinstance(e, EvaluationError):
        raise
      raise EvaluationError(f"{path} is not a feature file written by ItemFeatures.save "
                            f"({type(e).__name__}: {e}); delete it to extract again") from e
    return feats, meta


def encoder(model: nn.Module, variables: Any):
  """jitted (inputs [B, ...]) -> (vse, rnn) [B, E] float32 from `model.encode_items`."""
  @jax.jit
  def encode(variables, x):
    vse, rnn = model.apply(variables, x, False, method=type(model).encode_items)
    return vse.astype(jnp.float32), rnn.astype(jnp.float32)
  return functools.partial(encode, variables)


def extract(model: nn.Module, variables: Any, items: Any, batch_size: int) -> ItemFeatures:
  """Embeds every item of a data-layer item table.

  Args:
    model: an OutfitModel (image or cached-feature inputs, whichever `items` gives).
    variables: its variables ({'params', ...}).
    items: the data layer's ItemTable of a split (`input_pipeline.Dataset.item_table`).
    batch_size: items per encoder call; the last batch is padded, so one shape compiles.

  Returns:
    The split's ItemFeatures, in the table's item order.
  """
  encode = encoder(model, variables)
  vse, rnn = [], []
  for batch in items.batches(batch_size):
    x = np.asarray(batch)
    n = x.shape[0]
    if n < batch_size:  # pad the tail so every call has one shape
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, axis=0)])
    v, r = encode(x)
    vse.append(np.asarray(v)[:n])
    rnn.append(np.asarray(r)[:n])
  e = model.config.embed_dim
  return ItemFeatures(
      ids=np.asarray(items.ids, dtype=str),
      vse=np.concatenate(vse) if vse else np.zeros((0, e), np.float32),
      rnn=np.concatenate(rnn) if rnn else np.zeros((0, e), np.float32),
      categories=np.asarray(items.categories, np.int32),
      positions=np.asarray(items.positions, np.float32))


def from_arrays(ids: Sequence[str], vse: np.ndarray, rnn: np.ndarray,
                categories: Sequence[int] | None = None,
                positions: Sequence[float] | None = None) -> ItemFeatures:
  """ItemFeatures from plain arrays (unknown categories -1, positions NaN)."""
  n = len(ids)
  return ItemFeatures(
      ids=np.asarray(ids, dtype=str), vse=np.asarray(vse, np.float32),
      rnn=np.asarray(rnn, np.float32),
      categories=np.full(n, -1, np.int32) if categories is None else np.asarray(categories, np.int32),
      positions=np.full(n, np.nan, np.float32) if positions is None
      else np.asarray(positions, np.float32))
