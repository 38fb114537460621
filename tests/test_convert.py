"""TensorFlow checkpoint conversion against TensorFlow itself (needs the `convert` extra)."""

import sys

import numpy as np
import pytest

tf = pytest.importorskip(
    "tensorflow", reason="the converter needs TensorFlow: pip install -e '.[convert]' "
    "(CI runs this file in its own step with the extra installed)")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import traverse_util  # noqa: E402

from bilstm_jax import checkpointing  # noqa: E402
from bilstm_jax.convert import tf_checkpoint  # noqa: E402
from bilstm_jax.models import inception_v3  # noqa: E402
from bilstm_jax.models.outfit_lstm import OutfitModel  # noqa: E402
from tests.helpers import load_config  # noqa: E402

WORDS = ("red", "dress", "blue", "jeans", "shoes")
TF010 = {"kernel": "BasicLSTMCell/Linear/Matrix", "bias": "BasicLSTMCell/Linear/Bias",
         "FW": "FW", "BW": "BW"}
TF13 = {"kernel": "basic_lstm_cell/kernel", "bias": "basic_lstm_cell/bias", "FW": "fw", "BW": "bw"}


def _config(tmp_path, variant="tiny"):
  config = load_config(variant)
  vocab = tmp_path / "word_dict.txt"
  vocab.write_text("".join(f"{w} {40 - i}\n" for i, w in enumerate(WORDS)))
  with config.unlocked():
    config.data.vocab_file = str(vocab)
  return config


def _original_tensors(config, spelling=TF010, seed=0) -> dict[str, np.ndarray]:
  """Random values under the original graph's names and shapes (slim at the config's depth)."""
  rng = np.random.default_rng(seed)
  m = config.model
  abstract = traverse_util.flatten_dict(tf_checkpoint.abstract_variables(config, len(WORDS) + 2))
  rand = lambda *shape: rng.uniform(-0.5, 0.5, shape).astype(np.float32)
  out = {}
  for path, _, _ in inception_v3.conv_layers():
    scope = "InceptionV3/" + "/".join(path)
    kernel = abstract[("params", "InceptionV3", *path, "conv", "kernel")].shape
    out[f"{scope}/weights"] = rand(*kernel)
    out[f"{scope}/BatchNorm/beta"] = rand(kernel[-1])
    out[f"{scope}/BatchNorm/moving_mean"] = rand(kernel[-1])
    out[f"{scope}/BatchNorm/moving_variance"] = rand(kernel[-1]) + 1.0
  feat = inception_v3.output_dim(m.inception.depth_multiplier, m.inception.min_depth)
  e, h = m.embed_dim, m.hidden_dim
  out["image_embedding/weights"] = rand(feat, e)
  out["rnn_image_embedding/weights"] = rand(feat, e)
  out["seq_embedding/map"] = rand(len(WORDS) + 1, e)  # row 0 pads, no UNK row
  for d in ("FW", "BW"):
    out[f"lstm/{spelling[d]}/{spelling['kernel']}"] = rand(e + h, 4 * h)
    out[f"lstm/{spelling[d]}/{spelling['bias']}"] = rand(4 * h)
  for p in ("f", "b"):
    out[f"{p}_logits/weights"] = rand(h, e)
    out[f"{p}_logits/biases"] = rand(e)
  out["global_step"] = np.int64(34865)
  return out


def _save(tensors: dict[str, np.ndarray], prefix: str, v1: bool = False) -> str:
  """Saves the tensors as TF variables with tf.compat.v1.train.Saver (V1 or V2 format)."""
  v1_api = tf.compat.v1
  with tf.Graph().as_default():
    variables = [v1_api.get_variable(n, initializer=tf.constant(v)) for n, v in tensors.items()]
    version = v1_api.train.SaverDef.V1 if v1 else v1_api.train.SaverDef.V2
    saver = v1_api.train.Saver(variables, write_version=version)
    with v1_api.Session() as sess:
      sess.run(v1_api.global_variables_initializer())
      return saver.save(sess, prefix, write_meta_graph=False)


@pytest.mark.parametrize("spelling,v1", [(TF010, True), (TF13, False)],
                         ids=["tf0.10-V1", "tf1.3-V2"])
def test_workdir_holds_every_variable_once(tmp_path, spelling, v1):
  config = _config(tmp_path)
  tensors = _original_tensors(config, spelling)
  path = _save(tensors, str(tmp_path / "model.ckpt-34865"), v1=v1)
  converted = tf_checkpoint.convert_to_workdir(path, config, tmp_path / "out")
  assert converted.zeroed == []
  variables, step = checkpointing.restore_variables(tmp_path / "out")
  assert step == 34865
  flat = traverse_util.flatten_dict(variables)
  sources = {}
  for key in flat:
    found = [n for n in tf_checkpoint.source_names(key) if n in tensors]
    assert len(found) == 1, key
    sources[key] = found[0]
  assert sorted(sources.values()) == sorted(set(tensors) - {"global_step"})  # each used once
  for key, name in sources.items():
    want = tensors[name]
    if name == "seq_embedding/map":
      want = np.concatenate([want, np.zeros_like(want[:1])])
    np.testing.assert_array_equal(np.asarray(flat[key]), want, err_msg=name)
  assert (tmp_path / "out" / "config.json").exists()


def test_missing_and_extra_variables_are_named(tmp_path):
  config = _config(tmp_path)
  abstract = tf_checkpoint.abstract_variables(config, len(WORDS) + 2)
  tensors = _original_tensors(config)
  missing = dict(tensors)
  del missing["lstm/BW/BasicLSTMCell/Linear/Bias"]
  with pytest.raises(tf_checkpoint.CheckpointMismatchError,
                     match="lstm/BW/BasicLSTMCell/Linear/Bias"):
    tf_checkpoint.convert(missing, abstract)
  with pytest.raises(tf_checkpoint.CheckpointMismatchError, match="OptimizeLoss/extra"):
    tf_checkpoint.convert({**tensors, "OptimizeLoss/extra": np.zeros(3)}, abstract)
  both = {**tensors,
          "lstm/fw/basic_lstm_cell/kernel": tensors["lstm/FW/BasicLSTMCell/Linear/Matrix"]}
  with pytest.raises(tf_checkpoint.CheckpointMismatchError, match="both"):
    tf_checkpoint.convert(both, abstract)
  wrong = {**tensors, "seq_embedding/map": np.zeros((3, config.model.embed_dim), np.float32)}
  with pytest.raises(tf_checkpoint.CheckpointMismatchError, match="vocab_file"):
    tf_checkpoint.convert(wrong, abstract)


def test_vse_only_checkpoint_zeroes_the_lstm_side(tmp_path):
  config = _config(tmp_path, "tiny,vse_only")
  tensors = {n: v for n, v in _original_tensors(config).items()
             if not n.startswith(("lstm/", "f_logits", "b_logits", "rnn_image_embedding"))}
  abstract = tf_checkpoint.abstract_variables(config, len(WORDS) + 2)
  converted = tf_checkpoint.convert(tensors, abstract, tf_checkpoint.unused_groups(config))
  assert "params/forward_cell/linear/kernel" in converted.zeroed
  with pytest.raises(tf_checkpoint.CheckpointMismatchError, match="Missing"):
    tf_checkpoint.convert(tensors, abstract, tf_checkpoint.unused_groups(_config(tmp_path)))


def _tf_lstm(x, lengths, kernel, bias, reverse):
  """TensorFlow's fused BasicLSTMCell kernel (LSTMBlockCell: gates i, j, f, o; forget bias 1)."""
  batch, steps, _ = x.shape
  hidden = bias.shape[0] // 4
  out = np.zeros((batch, steps, hidden), np.float32)
  zeros = tf.zeros((1, hidden))
  for b in range(batch):
    c = h = zeros
    order = range(lengths[b])[::-1] if reverse else range(lengths[b])
    for t in order:
      _, c, _, _, _, _, h = tf.raw_ops.LSTMBlockCell(
          x=tf.constant(x[b:b + 1, t]), cs_prev=c, h_prev=h, w=tf.constant(kernel),
          wci=tf.zeros(hidden), wcf=tf.zeros(hidden), wco=tf.zeros(hidden), b=tf.constant(bias),
          forget_bias=1.0, cell_clip=-1.0, use_peephole=False)
      out[b, t] = h.numpy()[0]
  return out


def test_outputs_match_tensorflow(tmp_path):
  config = _config(tmp_path)
  tensors = _original_tensors(config)
  path = _save(tensors, str(tmp_path / "model.ckpt"))
  tf_checkpoint.convert_to_workdir(path, config, tmp_path / "out")
  variables, _ = checkpointing.restore_variables(tmp_path / "out")
  reader = tf.train.load_checkpoint(path)
  tfv = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
  m = config.model
  rng = np.random.default_rng(1)
  feat = inception_v3.output_dim(m.inception.depth_multiplier, m.inception.min_depth)
  feats = rng.standard_normal((2, 4, feat)).astype(np.float32)
  lengths = np.array([4, 3], np.int32)

  dense = lambda name, x: tf.matmul(tf.constant(x.reshape(-1, x.shape[-1])), tfv[name]).numpy()
  img = OutfitModel(m, vocab_size=len(WORDS) + 2, feature_dim=feat)
  vse, rnn = img.apply(variables, jnp.asarray(feats), False, method=img.encode_items)
  np.testing.assert_allclose(vse.reshape(-1, m.embed_dim), dense("image_embedding/weights", feats),
                             rtol=1e-5, atol=1e-5)
  rnn_tf = dense("rnn_image_embedding/weights", feats).reshape(2, 4, -1)
  np.testing.assert_allclose(rnn, rnn_tf, rtol=1e-5, atol=1e-5)

  fwd, bwd = img.apply(variables, jnp.asarray(rnn_tf), jnp.asarray(lengths), False,
                       method=img.predict)
  for out, d, logits, reverse in ((fwd, "FW", "f_logits", False), (bwd, "BW", "b_logits", True)):
    h = _tf_lstm(rnn_tf, lengths, tfv[f"lstm/{d}/BasicLSTMCell/Linear/Matrix"],
                 tfv[f"lstm/{d}/BasicLSTMCell/Linear/Bias"], reverse)
    want = (tf.matmul(h.reshape(-1, h.shape[-1]), tfv[f"{logits}/weights"])
            + tfv[f"{logits}/biases"]).numpy().reshape(2, 4, -1)
    for b, n in enumerate(lengths):
      np.testing.assert_allclose(out[b, :n], want[b, :n], rtol=1e-4, atol=1e-5, err_msg=d)

  # Original ids: word k (0-based) is k + 1, 0 pads; bag of words, then L2 normalised.
  tokens = np.array([[1, 2, 0, 0], [3, 5, 4, 0]], np.int32)
  bag = tf.reduce_sum(tf.nn.embedding_lookup(tfv["seq_embedding/map"], tokens)
                      * tf.cast(tokens > 0, tf.float32)[..., None], axis=1)
  np.testing.assert_allclose(img.apply(variables, jnp.asarray(tokens), method=img.encode_text),
                             tf.nn.l2_normalize(bag, 1).numpy(), rtol=1e-5, atol=1e-6)

  # The first slim conv + batch norm (epsilon 1e-3, no scale) + relu, in Flax and in TF.
  layer = inception_v3.STEM[0]
  scope = f"InceptionV3/{layer.name}"
  images = rng.uniform(-1, 1, (2, 9, 9, 3)).astype(np.float32)
  conv = inception_v3.ConvBN(tfv[f"{scope}/weights"].shape[-1], layer.kernel, layer.stride,
                             layer.padding)
  ours = conv.apply({"params": variables["params"]["InceptionV3"][layer.name],
                     "batch_stats": variables["batch_stats"]["InceptionV3"][layer.name]},
                    jnp.asarray(images), False, None)
  y = tf.nn.conv2d(images, tfv[f"{scope}/weights"], layer.stride, layer.padding)
  y = tf.nn.batch_normalization(y, tfv[f"{scope}/BatchNorm/moving_mean"],
                                tfv[f"{scope}/BatchNorm/moving_variance"],
                                tfv[f"{scope}/BatchNorm/beta"], None, 1e-3)
  np.testing.assert_allclose(ours, tf.nn.relu(y).numpy(), rtol=1e-4, atol=1e-5)


def test_slim_imagenet_checkpoint_to_timm_safetensors(tmp_path):
  rng = np.random.default_rng(2)
  encoder = inception_v3.InceptionV3()
  abstract = jax.eval_shape(lambda: encoder.init(
      jax.random.key(0), jnp.zeros((1, 75, 75, 3)), train=False))
  flat = traverse_util.flatten_dict(abstract)
  tensors = {"global_step": np.int64(1),
             "InceptionV3/Logits/Conv2d_1c_1x1/weights": np.zeros((1, 1, 2048, 2), np.float32)}
  for path, _, _ in inception_v3.conv_layers():
    scope = "InceptionV3/" + "/".join(path)
    shape = flat[("params", *path, "conv", "kernel")].shape
    tensors[f"{scope}/weights"] = rng.standard_normal(shape, np.float32)
    for name in ("beta", "moving_mean", "moving_variance"):
      tensors[f"{scope}/BatchNorm/{name}"] = rng.random(shape[-1], np.float32)
  path = _save(tensors, str(tmp_path / "inception_v3.ckpt"))
  out = tmp_path / "inception_v3.safetensors"
  tf_checkpoint.convert_inception(path, out)
  loaded = traverse_util.flatten_dict(inception_v3.load(abstract, out))
  for (collection, *p), value in loaded.items():
    module, leaf = p[-2:]
    short = {"kernel": "weights", "bias": "BatchNorm/beta", "mean": "BatchNorm/moving_mean",
             "var": "BatchNorm/moving_variance"}[leaf]
    want = tensors["InceptionV3/" + "/".join(p[:-2]) + "/" + short]
    np.testing.assert_array_equal(value, want, err_msg=f"{collection}/{module}/{leaf}")
  del tensors["InceptionV3/Mixed_7c/Branch_3/Conv2d_0b_1x1/BatchNorm/beta"]
  with pytest.raises(tf_checkpoint.CheckpointMismatchError,
                     match="Mixed_7c/Branch_3/Conv2d_0b_1x1/BatchNorm/beta"):
    tf_checkpoint.inception_to_timm(tensors)


def test_without_tensorflow_the_error_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  with pytest.raises(ImportError, match=r"bilstm-jax\[convert\]"):
    tf_checkpoint.read_checkpoint("model.ckpt")
