"""The losses against plain NumPy loops written from han2017.md section 3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilstm_jax.models import losses


def _np_next_item(pred, emb, lengths, direction, mask_end):
  """Stack every real position's prediction and target; row i's label is column i."""
  rows, targets, ends = [], [], []
  for b, n in enumerate(lengths):
    for t in range(n):
      rows.append(pred[b, t])
      nxt = t + 1 if direction == "forward" else t - 1
      end = not 0 <= nxt < n
      targets.append(np.zeros(emb.shape[-1]) if end else emb[b, nxt])
      ends.append(end)
  rows, targets, ends = np.array(rows, np.float64), np.array(targets, np.float64), np.array(ends)
  total = 0.0
  for i in range(len(rows)):
    keep = [j for j in range(len(rows)) if not (mask_end and ends[j] and j != i and ends[i])]
    if mask_end and not ends[i]:  # a non-END row keeps a single END column
      end_cols = [j for j in keep if ends[j]]
      keep = [j for j in keep if not ends[j]] + end_cols[:1]
    logits = targets[keep] @ rows[i]
    own = logits[keep.index(i)]
    total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - own
  return total / len(rows)


def _np_vse(img, text, counts, mask, margin):
  sel = [(b, t) for b in range(img.shape[0]) for t in range(img.shape[1])
         if mask[b, t] and counts[b, t] >= 2]
  if not sel:
    return 0.0
  im = np.array([img[i] / np.linalg.norm(img[i]) for i in sel], np.float64)
  tx = np.array([text[i] for i in sel], np.float64)
  s = tx @ im.T
  m = len(sel)
  total = 0.0
  for i in range(m):
    for j in range(m):
      if i != j:
        total += max(0, margin - s[i, i] + s[i, j]) + max(0, margin - s[j, j] + s[i, j])
  return total / m**2


def _np_siamese(emb, mask, margin):
  items = [(b, emb[b, t] / np.linalg.norm(emb[b, t]))
           for b in range(emb.shape[0]) for t in range(emb.shape[1]) if mask[b, t]]
  pos, neg = [], []
  for i, (bi, ei) in enumerate(items):
    for j, (bj, ej) in enumerate(items):
      if i != j:
        (pos if bi == bj else neg).append(float(ei @ ej))
  return np.mean(np.maximum(np.array(neg) - margin, 0)) - np.mean(pos)


def _random_batch(seed, lengths, t=8, e=6):
  rng = np.random.default_rng(seed)
  b = len(lengths)
  pred = rng.normal(size=(b, t, e)).astype(np.float32)
  emb = rng.normal(size=(b, t, e)).astype(np.float32)
  return pred, emb, np.array(lengths, np.int32)


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("mask_end", [False, True])
@pytest.mark.parametrize("lengths", [[3, 8, 1, 5], [2], [1, 1]])
def test_next_item_loss_matches_numpy(direction, mask_end, lengths):
  pred, emb, lens = _random_batch(0, lengths)
  got = losses.next_item_loss(pred, emb, lens, direction, mask_end=mask_end)
  want = _np_next_item(pred, emb, lens, direction, mask_end)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_next_item_loss_ignores_padding():
  pred, emb, lens = _random_batch(1, [3, 5])
  noisy_pred, noisy_emb = pred.copy(), emb.copy()
  noisy_pred[0, 3:] = 1e3
  noisy_emb[1, 5:] = -7.0
  for d in ("forward", "backward"):
    np.testing.assert_allclose(losses.next_item_loss(pred, emb, lens, d),
                               losses.next_item_loss(noisy_pred, noisy_emb, lens, d), rtol=1e-6)


def test_shifted_targets_put_end_after_last_and_before_first():
  emb = jnp.arange(1, 9, dtype=jnp.float32).reshape(1, 4, 2)
  fwd, fwd_end = losses.shifted_targets(emb, jnp.array([3]), "forward")
  bwd, bwd_end = losses.shifted_targets(emb, jnp.array([3]), "backward")
  np.testing.assert_array_equal(fwd[0, :3], [[3, 4], [5, 6], [0, 0]])
  np.testing.assert_array_equal(bwd[0, :3], [[0, 0], [1, 2], [3, 4]])
  np.testing.assert_array_equal(fwd_end[0], [False, False, True, False])
  np.testing.assert_array_equal(bwd_end[0], [True, False, False, False])


@pytest.mark.parametrize("counts_fill", [None, 1])
def test_vse_loss_matches_numpy(counts_fill):
  rng = np.random.default_rng(2)
  b, t, e = 3, 4, 5
  img = rng.normal(size=(b, t, e)).astype(np.float32)
  text = np.asarray(losses.l2_normalize(rng.normal(size=(b, t, e))))
  counts = rng.integers(0, 5, size=(b, t)) if counts_fill is None else np.full((b, t), counts_fill)
  mask = np.arange(t)[None, :] < np.array([4, 2, 3])[:, None]
  got = losses.vse_loss(img, text, counts, mask, margin=0.2)
  np.testing.assert_allclose(got, _np_vse(img, text, counts, mask, 0.2), rtol=1e-5, atol=1e-7)
  if counts_fill == 1:  # no item has two tokens: nothing takes part
    assert float(got) == 0.0


def test_siamese_loss_matches_numpy():
  rng = np.random.default_rng(3)
  emb = rng.normal(size=(3, 4, 5)).astype(np.float32)
  mask = np.arange(4)[None, :] < np.array([4, 1, 3])[:, None]
  np.testing.assert_allclose(losses.siamese_loss(emb, mask, 0.8), _np_siamese(emb, mask, 0.8),
                             rtol=1e-5, atol=1e-7)


def test_gradients_are_finite_with_degenerate_batches():
  pred, emb, lens = _random_batch(4, [1, 8])
  mask = np.arange(8)[None, :] < lens[:, None]
  counts = np.ones((2, 8), np.int32)  # no item takes part in the VSE loss

  def total(pred, emb):
    return (losses.next_item_loss(pred, emb, lens, "forward")
            + losses.next_item_loss(pred, emb, lens, "backward", mask_end=True)
            + losses.vse_loss(emb, losses.l2_normalize(pred), counts, mask)
            + losses.siamese_loss(emb, mask))

  grads = jax.grad(total, argnums=(0, 1))(pred, emb)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
