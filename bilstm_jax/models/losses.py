"""The paper's losses (han2017.md section 3): next-item softmax, VSE contrastive, Siamese.

Every loss takes padded [B, T, ...] arrays with a mask and works on the flattened
B*T positions with static shapes, so it jits once; padded positions take no part.
Losses are computed in float32 whatever the model's compute dtype.
"""

import jax
import jax.numpy as jnp

_NEG_INF = -1e30


def shifted_targets(emb: jax.Array, lengths: jax.Array, direction: str) -> tuple[jax.Array, jax.Array]:
  """Targets of the forward (next item) or backward (previous item) predictions.

  Returns (targets [B, T, E], is_end [B, T]): the neighbouring item's embedding,
  and the zero END vector after the last (before the first) real item.
  """
  t = jnp.arange(emb.shape[1])[None, :]
  if direction == "forward":
    targets = jnp.roll(emb, -1, axis=1)
    is_end = t == lengths[:, None] - 1
  elif direction == "backward":
    targets = jnp.roll(emb, 1, axis=1)
    is_end = t == 0
  else:
    raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
  is_end = jnp.broadcast_to(is_end, emb.shape[:2])
  return jnp.where(is_end[..., None], 0.0, targets), is_end


def next_item_loss(pred: jax.Array, emb: jax.Array, lengths: jax.Array, direction: str,
                   mask_end: bool = False) -> jax.Array:
  """Mean softmax cross-entropy of each prediction against all targets of the batch.

  Row i's label is its own target; every other real target of the batch (other
  items and the END zero vectors) is a negative. With `mask_end` False (the
  original's [quirk]) the B identical END columns all stay in every softmax; with
  True only one END column is kept.
  """
  b, t, e = emb.shape
  valid = (jnp.arange(t)[None, :] < lengths[:, None]).reshape(-1)
  targets, is_end = shifted_targets(emb, lengths, direction)
  pred = pred.reshape(b * t, e).astype(jnp.float32)
  targets = targets.reshape(b * t, e).astype(jnp.float32)
  is_end = is_end.reshape(-1) & valid
  logits = pred @ targets.T
  columns = valid
  if mask_end:
    first_end = jnp.argmax(is_end)  # all END logits are equal (pred . 0): keep one column
    columns = columns & (~is_end | (jnp.arange(b * t) == first_end))
  logits = jnp.where(columns[None, :], logits, _NEG_INF)
  own = jnp.where(is_end, 0.0, jnp.diagonal(logits))
  row_loss = jax.nn.logsumexp(logits, axis=-1) - own
  return jnp.sum(jnp.where(valid, row_loss, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def vse_loss(img: jax.Array, text: jax.Array, token_counts: jax.Array, mask: jax.Array,
             margin: float = 0.2) -> jax.Array:
  """Contrastive image-text loss over the items whose text has >= 2 tokens.

  `text` is already normalised; `img` is normalised here. With M taking part:
  (sum of both hinge costs, diagonals zeroed) / M^2; 0 when no item takes part.
  """
  e = img.shape[-1]
  take = (mask & (token_counts >= 2)).reshape(-1)
  img = l2_normalize(img.reshape(-1, e))
  text = text.reshape(-1, e).astype(jnp.float32)
  scores = text @ img.T  # rows: texts, columns: images
  diag = jnp.diagonal(scores)
  cost_s = jnp.maximum(0.0, margin - diag[:, None] + scores)
  cost_im = jnp.maximum(0.0, margin - diag[None, :] + scores)
  pairs = take[:, None] & take[None, :] & ~jnp.eye(take.shape[0], dtype=bool)
  total = jnp.sum(jnp.where(pairs, cost_s + cost_im, 0.0))
  m = jnp.sum(take).astype(jnp.float32)
  return total / jnp.maximum(m * m, 1.0)


def siamese_loss(emb: jax.Array, mask: jax.Array, margin: float = 0.8) -> jax.Array:
  """Pairwise baseline: mean hinge on negatives' cosine minus mean positives' cosine.

  Positives are pairs of distinct items of one outfit; negatives pairs from
  different outfits.
  """
  b, t, e = emb.shape
  flat = l2_normalize(emb.reshape(b * t, e))
  cos = flat @ flat.T
  valid = mask.reshape(-1)
  outfit = jnp.repeat(jnp.arange(b), t)
  both = valid[:, None] & valid[None, :]
  same = outfit[:, None] == outfit[None, :]
  pos = both & same & ~jnp.eye(b * t, dtype=bool)
  neg = both & ~same
  neg_cost = jnp.sum(jnp.where(neg, jnp.maximum(cos - margin, 0.0), 0.0)) / jnp.maximum(jnp.sum(neg), 1)
  pos_sim = jnp.sum(jnp.where(pos, cos, 0.0)) / jnp.maximum(jnp.sum(pos), 1)
  return neg_cost - pos_sim
