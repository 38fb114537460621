"""A tiny world for the evaluation tests: synthetic item features and a trained tiny model.

Outfits follow a category order (top, bottom, shoes, bag, accessory, some slots
left out) and share a style; an item's 'encoder feature' is its category's
vector plus its outfit's style plus noise. A cached-feature OutfitModel trained
for a few hundred cheap steps on the next-item losses learns both, so the
evaluation tasks must come out clearly above chance on the original protocol.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bilstm_jax.evaluation import features as features_lib
from bilstm_jax.models import losses
from bilstm_jax.models.outfit_lstm import OutfitModel
from tests.helpers import load_config
from tfds_polyvore.layout import item_id

NUM_CATEGORIES = 5
FEATURE_DIM = 16
MAX_ITEMS = 8
VOCAB = 12  # word ids 1..10 are the words w1..w10, 11 = UNK, 0 = pad


def make_outfits(n: int, seed: int, first_set: int) -> list[list[tuple[str, int, np.ndarray]]]:
  """n outfits of (item id, category, feature) in category order."""
  rng = np.random.default_rng(seed)
  cat_vecs = np.random.default_rng(100).normal(size=(NUM_CATEGORIES, FEATURE_DIM)) * 2.0
  styles = np.random.default_rng(101).normal(size=(4, FEATURE_DIM))
  outfits = []
  for o in range(n):
    cats = sorted(rng.choice(NUM_CATEGORIES, size=int(rng.integers(3, 6)), replace=False))
    style = styles[rng.integers(len(styles))]
    outfit = []
    for index, c in enumerate(cats, start=1):
      feat = cat_vecs[c] + style + 0.3 * rng.normal(size=FEATURE_DIM)
      outfit.append((item_id(first_set + o, index), int(c), feat.astype(np.float32)))
    outfits.append(outfit)
  return outfits


def padded(outfits):
  b = len(outfits)
  x = np.zeros((b, MAX_ITEMS, FEATURE_DIM), np.float32)
  lengths = np.array([len(o) for o in outfits], np.int32)
  for i, o in enumerate(outfits):
    x[i, :len(o)] = [f for _, _, f in o]
  return x, lengths


def make_model(config):
  return OutfitModel(config.model, vocab_size=VOCAB, feature_dim=FEATURE_DIM)


def init_variables(model, seed: int = 0):
  batch = example_batch()
  return model.init(jax.random.key(seed), batch, train=False)


def random_variables(model, batch, seed: int = 0):
  """Variables of the right shapes without compiling init (slow for Inception on a CPU)."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))
  rng = np.random.default_rng(seed)
  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "batch_stats" in name:
      return np.full(leaf.shape, 1.0 if "var" in name else 0.0, leaf.dtype)
    return rng.uniform(-0.08, 0.08, leaf.shape).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract)


def example_batch():
  return {"features": np.zeros((1, MAX_ITEMS, FEATURE_DIM), np.float32),
          "lengths": np.ones(1, np.int32), "tokens": np.zeros((1, MAX_ITEMS, 4), np.int32),
          "mask": np.zeros((1, MAX_ITEMS), bool)}


def train(model, variables, outfits, steps: int = 300, batch: int = 16, seed: int = 0,
          forward: bool = True, backward: bool = True):
  """Adam on the next-item losses (the encoder part is a linear map of the cached features)."""
  x_all, len_all = padded(outfits)
  opt = optax.adam(1e-2)
  params = variables["params"]
  state = opt.init(params)

  def loss_fn(params, x, lengths):
    rnn = model.apply({"params": params}, x, False, method=OutfitModel.encode_items)[1]
    fwd, bwd = model.apply({"params": params}, rnn, lengths, False, method=OutfitModel.predict)
    total = 0.0
    if forward:
      total += losses.next_item_loss(fwd, rnn, lengths, "forward")
    if backward:
      total += losses.next_item_loss(bwd, rnn, lengths, "backward")
    return total

  @jax.jit
  def step(params, state, x, lengths):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, lengths)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, loss

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    sel = rng.choice(len(outfits), size=batch, replace=False)
    params, state, _ = step(params, state, jnp.asarray(x_all[sel]), jnp.asarray(len_all[sel]))
  return {**variables, "params": params}


def item_features(model, variables, outfits) -> features_lib.ItemFeatures:
  items = [it for o in outfits for it in o]
  positions = [p / max(len(o) - 1, 1) for o in outfits for p in range(len(o))]
  encode = features_lib.encoder(model, variables)
  vse, rnn = encode(jnp.asarray(np.stack([f for _, _, f in items])))
  return features_lib.from_arrays([i for i, _, _ in items], np.asarray(vse), np.asarray(rnn),
                                  [c for _, c, _ in items], positions)


def fitb_questions(outfits, seed: int, matched: bool = False) -> list[dict]:
  """One question per outfit; wrong candidates from other outfits (matched: same category)."""
  rng = np.random.default_rng(seed)
  by_cat = {}
  for o, outfit in enumerate(outfits):
    for i, c, _ in outfit:
      by_cat.setdefault(c, []).append((i, o))
  questions = []
  for o, outfit in enumerate(outfits):
    blank = int(rng.integers(len(outfit)))
    ids = [i for i, _, _ in outfit]
    wrong = []
    while len(wrong) < 3:
      if matched:
        pool = by_cat[outfit[blank][1]]
        cand, oo = pool[rng.integers(len(pool))]
      else:
        oo = int(rng.integers(len(outfits)))
        cand = outfits[oo][rng.integers(len(outfits[oo]))][0]
      if oo != o and cand not in wrong:
        wrong.append(cand)
    questions.append({"question": ids[:blank] + ids[blank + 1:], "answers": [ids[blank]] + wrong,
                      "blank_position": blank + 1})
  return questions


def compat_lines(outfits, seed: int) -> list[dict]:
  """Every outfit positive, as many negatives of random items of other outfits."""
  rng = np.random.default_rng(seed)
  lines = [{"label": 1, "items": [i for i, _, _ in o]} for o in outfits]
  for o in range(len(outfits)):
    n = len(outfits[o])
    picks = rng.choice(len(outfits), size=n, replace=False)
    lines.append({"label": 0, "items": [outfits[p][rng.integers(len(outfits[p]))][0]
                                         for p in picks]})
  return lines


@functools.lru_cache(maxsize=None)
def trained(arg: str = "tiny", steps: int = 300):
  """(config, model, variables, test ItemFeatures, test outfits), cached per test session."""
  config = load_config(arg)
  model = make_model(config)
  variables = init_variables(model)
  train_outfits = make_outfits(400, seed=1, first_set=1000)
  test_outfits = make_outfits(60, seed=2, first_set=9000)
  variables = train(model, variables, train_outfits, steps=steps,
                    forward=config.loss.forward_weight > 0,
                    backward=config.loss.backward_weight > 0)
  return config, model, variables, item_features(model, variables, test_outfits), test_outfits
