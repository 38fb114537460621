"""The outfit model: item encoders, the visual-semantic embedding and the Bi-LSTM.

han2017.md section 2. Parameter names follow the original graph (image_embedding,
rnn_image_embedding, seq_embedding, f_logits, b_logits, and one fused kernel per
LSTM cell in TensorFlow's gate order) so that the authors' checkpoints map onto
them one to one.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bilstm_jax.errors import ConfigError
from bilstm_jax.models import inception_v3  # noqa
from bilstm_jax.models.losses import l2_normalize

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def symmetric_uniform(scale: float) -> nn.initializers.Initializer:
  """uniform(-scale, scale), the original's initializer for every weight."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def compute_dtype(name: str) -> Any:
  if name not in DTYPES:
    raise ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


class LSTMCell(nn.RNNCellBase):
  """TensorFlow's BasicLSTMCell: one kernel over [x, h], gates i, j, f, o, forget bias added."""
  features: int
  init_scale: float
  forget_bias: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    c, h = carry
    gates = nn.Dense(4 * self.features, dtype=self.dtype, name="linear",
                     kernel_init=symmetric_uniform(self.init_scale))(
                         jnp.concatenate([x, h.astype(x.dtype)], axis=-1))
    i, j, f, o = jnp.split(gates.astype(jnp.float32), 4, axis=-1)
    c = c * nn.sigmoid(f + self.forget_bias) + nn.sigmoid(i) * jnp.tanh(j)
    h = jnp.tanh(c) * nn.sigmoid(o)
    return (c, h), h

  def initialize_carry(self, rng, input_shape):
    zeros = jnp.zeros(input_shape[:-1] + (self.features,), jnp.float32)
    return zeros, zeros

  @property
  def num_feature_axes(self) -> int:
    return 1


class GRUCell(nn.RNNCellBase):
  """TensorFlow's GRUCell: reset and update gates over [x, h], candidate over [x, r * h]."""
  features: int
  init_scale: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, x):
    init = symmetric_uniform(self.init_scale)
    xh = jnp.concatenate([x, h.astype(x.dtype)], axis=-1)
    gates = nn.Dense(2 * self.features, dtype=self.dtype, kernel_init=init,
                     bias_init=nn.initializers.ones, name="gates")(xh)
    r, u = jnp.split(nn.sigmoid(gates.astype(jnp.float32)), 2, axis=-1)
    cand = nn.Dense(self.features, dtype=self.dtype, kernel_init=init, name="candidate")(
        jnp.concatenate([x, (r * h).astype(x.dtype)], axis=-1))
    h = u * h + (1 - u) * jnp.tanh(cand.astype(jnp.float32))
    return h, h

  def initialize_carry(self, rng, input_shape):
    return jnp.zeros(input_shape[:-1] + (self.features,), jnp.float32)

  @property
  def num_feature_axes(self) -> int:
    return 1


class OutfitModel(nn.Module):
  """Item encoders + VSE + bidirectional next-item predictor.

  Inputs are pixels [..., S, S, 3] in [-1, 1], or cached encoder features
  [..., D] when `feature_dim` is given (the encoder then is not part of the model).
  """
  config: ml_collections.ConfigDict  # the `model` part of the config
  vocab_size: int
  feature_dim: int | None = None

  def setup(self):
    c = self.config
    self.dtype = compute_dtype(c.dtype)
    init = symmetric_uniform(c.init_scale)
    if self.feature_dim is None:
      self.encoder = inception_v3.InceptionV3(
          depth_multiplier=c.inception.depth_multiplier, min_depth=c.inception.min_depth,
          keep_prob=c.inception.keep_prob, bn_decay=c.inception.bn_decay,
          filter_grad=c.inception.filter_grad, dtype=self.dtype, name="InceptionV3")
    dense = lambda name, bias=False: nn.Dense(
        c.embed_dim, use_bias=bias, kernel_init=init, dtype=self.dtype, name=name)
    self.image_embedding = dense("image_embedding")
    self.rnn_image_embedding = dense("rnn_image_embedding")
    self.seq_embedding = nn.Embed(self.vocab_size, c.embed_dim, embedding_init=init,
                                  name="seq_embedding")
    cells = {"lstm": lambda name: LSTMCell(c.hidden_dim, c.init_scale, dtype=self.dtype, name=name),
             "gru": lambda name: GRUCell(c.hidden_dim, c.init_scale, dtype=self.dtype, name=name)}
    if c.cell not in cells:
      raise ConfigError(f"model.cell must be one of {sorted(cells)}, got {c.cell!r}")
    self.forward_rnn = nn.RNN(cells[c.cell]("forward_cell"))
    self.backward_rnn = nn.RNN(cells[c.cell]("backward_cell"), reverse=True, keep_order=True)
    self.f_logits = dense("f_logits", bias=True)
    self.b_logits = dense("b_logits", bias=True)
    self.rnn_dropout = nn.Dropout(rate=1.0 - c.lstm_keep_prob)

  def encode_items(self, x: jax.Array, train: bool, mask: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array]:
    """Pixels or cached features [..., *] -> (VSE embedding, LSTM-space embedding) [..., E]."""
    if self.feature_dim is None:
      lead = x.shape[:-3]
      pixels = x.reshape((-1,) + x.shape[-3:])
      flat_mask = None if mask is None else mask.reshape(-1)
      fine_tune = train and self.config.train_inception
      feats = self.encoder(pixels, train=fine_tune, mask=flat_mask)
      if not self.config.train_inception:
        feats = jax.lax.stop_gradient(feats)
      feats = feats.reshape(lead + feats.shape[-1:])
    else:
      feats = x
    feats = feats.astype(self.dtype)
    return self.image_embedding(feats), self.rnn_image_embedding(feats)

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    """Word ids [..., L] (0 = padding) -> L2-normalised sum of word vectors [..., E]."""
    vectors = self.seq_embedding(tokens) * (tokens > 0)[..., None]
    return l2_normalize(jnp.sum(vectors, axis=-2))

  def predict(self, rnn: jax.Array, lengths: jax.Array, train: bool
              ) -> tuple[jax.Array, jax.Array]:
    """Predicted next (fwd) and previous (bwd) item embeddings at every position.

    fwd[b, t] follows items 0..t; bwd[b, t] follows items lengths[b]-1..t; both
    directions start from a zero state, and padding never changes a real position.
    """
    x = self.rnn_dropout(rnn.astype(self.dtype), deterministic=not train)
    fwd = self.forward_rnn(x, seq_lengths=lengths)
    bwd = self.backward_rnn(x, seq_lengths=lengths)
    fwd = self.rnn_dropout(fwd.astype(self.dtype), deterministic=not train)
    bwd = self.rnn_dropout(bwd.astype(self.dtype), deterministic=not train)
    return self.f_logits(fwd), self.b_logits(bwd)

  def __call__(self, batch: dict[str, jax.Array], train: bool,
               bn_mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """All embeddings and predictions of a padded batch of outfits [B, T, ...]."""
    x = batch["features"] if self.feature_dim is not None else batch["images"]
    vse, rnn = self.encode_items(x, train, mask=bn_mask)
    fwd, bwd = self.predict(rnn, batch["lengths"], train)
    return {"vse": vse, "rnn": rnn, "text": self.encode_text(batch["tokens"]),
            "fwd": fwd, "bwd": bwd}
