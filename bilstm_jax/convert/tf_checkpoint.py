r"""The authors' TensorFlow checkpoints -> a bilstm-jax workdir or ImageNet weights file.

  # A released model (e.g. model/final_model/model.ckpt-34865) -> an evaluable workdir:
  python -m bilstm_jax.convert.tf_checkpoint --checkpoint=model.ckpt-34865 \
      --config=configs/bilstm.py --config.data.root=/data/polyvore \
      --config.data.vocab_file=/data/polyvore/final_word_dict.txt --workdir=/tmp/released
  python -m bilstm_jax.evaluation --workdir=/tmp/released
  # The slim ImageNet checkpoint -> timm-named safetensors for model.inception.weights:
  python -m bilstm_jax.convert.tf_checkpoint --checkpoint=inception_v3.ckpt \
      --inception_only --out=inception_v3.safetensors

Both TensorFlow formats are read (V1: one file; V2: pass the prefix of .index and
.data-*). TensorFlow is needed only here: `pip install 'bilstm-jax[convert]'`.

Variable mapping (E = embed_dim, H = hidden_dim, V = words in the word dict;
<layer> is a slim scope such as Conv2d_1a_3x3 or Mixed_5b/Branch_1/Conv2d_0b_5x5):

  TensorFlow name                                 bilstm-jax variable
  InceptionV3/<layer>/weights [kh,kw,in,out]      params/InceptionV3/<layer>/conv/kernel
  InceptionV3/<layer>/BatchNorm/beta              params/InceptionV3/<layer>/bn/bias
  InceptionV3/<layer>/BatchNorm/moving_mean       batch_stats/InceptionV3/<layer>/bn/mean
  InceptionV3/<layer>/BatchNorm/moving_variance   batch_stats/InceptionV3/<layer>/bn/var
  image_embedding/weights [2048, E]               params/image_embedding/kernel
  rnn_image_embedding/weights [2048, E]           params/rnn_image_embedding/kernel
  seq_embedding/map [V+1, E]                      params/seq_embedding/embedding [V+2, E]
  lstm/FW/BasicLSTMCell/Linear/Matrix (TF 0.10),  params/forward_cell/linear/kernel [E+H, 4H]
    lstm/fw/basic_lstm_cell/weights (TF 1.0-1.2),
    lstm/fw/basic_lstm_cell/kernel (TF >= 1.3)
  lstm/FW/BasicLSTMCell/Linear/Bias,              params/forward_cell/linear/bias [4H]
    lstm/fw/basic_lstm_cell/{biases,bias}
  lstm/{BW,bw}/...                                params/backward_cell/...
  lstm/FW/GRUCell/{Gates,Candidate}/Linear/       params/forward_cell/{gates,candidate}/
    {Matrix,Bias}, lstm/fw/gru_cell/                {kernel,bias} (model.cell=gru)
    {gates,candidate}/{weights,kernel,biases,bias}
  f_logits/weights, f_logits/biases               params/f_logits/kernel, params/f_logits/bias
  b_logits/weights, b_logits/biases               params/b_logits/kernel, params/b_logits/bias
  global_step                                     the checkpoint's step

Layouts. slim conv kernels and Flax's are both [kh, kw, in, out]; dense kernels
are [in, out] in both. TensorFlow's BasicLSTMCell (every version) multiplies
[x, h] by one kernel, splits the columns into gates i, j, f, o and adds the
forget bias 1.0 to f at run time; our LSTMCell does the same, so kernel and
bias copy unchanged (tests/test_convert.py checks this against TensorFlow's own
fused LSTM kernel). GRUCell: gates [x, h] -> r, u; candidate [x, r * h]; same.
The original's word ids are line index + 1 with row 0 for padding and no row for
UNK; ours add a UNK row at the end, written as zeros (an unknown word adds
nothing to an item's text vector).

The ImageNet classifier heads (InceptionV3/AuxLogits, InceptionV3/Logits) are
ignored; any other variable left unused, and any missing one, is an error. The
authors' VSE-only and Siamese graphs lack the LSTM side (and Siamese the word
embedding): with the vse_only or siamese config variant those variables, unused
by that variant, are written as zeros.
"""

import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath
from flax import traverse_util
from ml_collections import config_flags

from bilstm_jax import checkpointing, input_pipeline, text, train
from bilstm_jax.models import inception_v3
from bilstm_jax.models.outfit_lstm import OutfitModel

INSTALL_HINT = ("Converting TensorFlow checkpoints needs TensorFlow: "
                "pip install 'bilstm-jax[convert]' (or pip install tensorflow-cpu).")
IGNORED = re.compile(r"^(global_step|InceptionV3/(AuxLogits|Logits)/.*)$")
_LSTM_SIDE = ("rnn_image_embedding", "forward_cell", "backward_cell", "f_logits", "b_logits")
_BN_NAMES = {"bias": "BatchNorm/beta", "mean": "BatchNorm/moving_mean",
             "var": "BatchNorm/moving_variance"}


class CheckpointMismatchError(ValueError):
  """The checkpoint's variables do not match the model the config describes."""


class Converted(NamedTuple):
  variables: dict  # {'params': ..., 'batch_stats': ...} as numpy arrays
  step: int  # the checkpoint's global_step (0 when it has none)
  zeroed: list[str]  # our variables absent from the source graph, written as zeros


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every variable of a V1 or V2 TensorFlow checkpoint, by name."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(INSTALL_HINT) from None
  # Users often pass one of a V2 checkpoint's files instead of its prefix.
  prefix = re.sub(r"\.(index|meta|data-\d+-of-\d+)$", "", os.fspath(path))
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    raise FileNotFoundError(
        f"Cannot read a TensorFlow checkpoint at {prefix} ({type(e).__name__}: {e}). Pass the "
        "V1 checkpoint file, or the prefix of a V2 checkpoint's .index and .data-* files "
        "(e.g. model/final_model/model.ckpt-34865).") from e
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def source_names(key: tuple[str, ...]) -> tuple[str, ...]:
  """The TensorFlow names (one per TF version's spelling) of one of our variables."""
  _, top, *rest = key
  if top == "InceptionV3":
    *layer, _, leaf = rest
    return (f"InceptionV3/{'/'.join(layer)}/{_BN_NAMES.get(leaf, 'weights')}",)
  if top in ("image_embedding", "rnn_image_embedding"):
    return (f"{top}/weights",)
  if top == "seq_embedding":
    return ("seq_embedding/map",)
  if top in ("f_logits", "b_logits"):
    return (f"{top}/{'weights' if rest[-1] == 'kernel' else 'biases'}",)
  if top in ("forward_cell", "backward_cell"):
    d = "FW" if top == "forward_cell" else "BW"
    module, leaf = rest
    old, new = (("Matrix", ("weights", "kernel")) if leaf == "kernel" else
                ("Bias", ("biases", "bias")))
    if module == "linear":  # BasicLSTMCell
      return (f"lstm/{d}/BasicLSTMCell/Linear/{old}",
              *(f"lstm/{d.lower()}/basic_lstm_cell/{n}" for n in new))
    return (f"lstm/{d}/GRUCell/{module.capitalize()}/Linear/{old}",
            *(f"lstm/{d.lower()}/gru_cell/{module}/{n}" for n in new))
  raise CheckpointMismatchError(f"{'/'.join(key)} has no counterpart in the original graph.")


def unused_groups(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Our top-level parameters the config's variant never uses (absent from its original graph)."""
  if config.model.kind == "siamese":
    return _LSTM_SIDE + ("seq_embedding",)
  if not (config.loss.forward_weight or config.loss.backward_weight):
    return _LSTM_SIDE
  return ()


def abstract_variables(config: ml_collections.ConfigDict, vocab_size: int) -> dict:
  """Shapes and dtypes of the full model's variables (Inception included)."""
  model = OutfitModel(config.model, vocab_size=vocab_size)
  batch = {"images": jnp.zeros((1, 1, 75, 75, 3)), "lengths": jnp.ones((1,), jnp.int32),
           "tokens": jnp.zeros((1, 1, 1), jnp.int32)}
  return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, batch, train=False))


def _shortlist(names: list[str]) -> str:
  return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def convert(tensors: dict[str, np.ndarray], abstract: dict,
            unused: tuple[str, ...] = ()) -> Converted:
  """Maps checkpoint tensors onto our variables; every tensor is used exactly once.

  Args:
    tensors: the checkpoint's variables by TensorFlow name.
    abstract: our model's variables (arrays or jax.ShapeDtypeStruct).
    unused: top-level parameters that may be absent (written as zeros).

  Raises:
    CheckpointMismatchError: a variable is missing, unexpected, ambiguous or mis-shaped.
  """
  flat = traverse_util.flatten_dict(abstract)
  out, used, missing, zeroed = {}, set(), [], []
  for key, target in sorted(flat.items()):
    shape = tuple(target.shape)
    found = [n for n in source_names(key) if n in tensors]
    if len(found) > 1:
      raise CheckpointMismatchError(f"The checkpoint has both {' and '.join(found)} for "
                                    f"{'/'.join(key)}; expected one of them.")
    if not found:
      if key[1] in unused:
        out[key] = np.zeros(shape, target.dtype)
        zeroed.append("/".join(key))
      else:
        missing.append(" or ".join(source_names(key)))
      continue
    name = found[0]
    value = np.asarray(tensors[name])
    used.add(name)
    if key[1] == "seq_embedding" and value.shape == (shape[0] - 1,) + shape[1:]:
      value = np.concatenate([value, np.zeros_like(value[:1])])  # the UNK row
    elif key[1] == "seq_embedding" and value.shape[1:] == shape[1:] and value.shape != shape:
      raise CheckpointMismatchError(
          f"{name} has {value.shape[0]} rows but the vocabulary needs {shape[0] - 1} (words + "
          "padding): set data.vocab_file to the word dict the model was trained with "
          "(final_word_dict.txt for the released models).")
    if value.shape != shape:
      raise CheckpointMismatchError(
          f"{name} has shape {value.shape}, but {'/'.join(key)} needs {shape}: the config does "
          "not describe this model (embed_dim, hidden_dim, cell, inception depth).")
    out[key] = value.astype(target.dtype)
  _check_all_used(tensors, used, missing,
                  "the config does not describe this model (e.g. model.cell, or a vse_only/"
                  "siamese checkpoint converted without its variant)")
  step = int(tensors["global_step"]) if "global_step" in tensors else 0
  return Converted(traverse_util.unflatten_dict(out), step, zeroed)


def inception_to_timm(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """slim Inception v3 variables -> timm names, the layout `inception_v3.load` reads."""
  out, used, missing = {}, set(), []
  for path, timm, conv in inception_v3.conv_layers():
    prefix = "InceptionV3/" + "/".join(path)
    names = {"weights": f"{timm}.conv.weight", _BN_NAMES["bias"]: f"{timm}.bn.bias",
             _BN_NAMES["mean"]: f"{timm}.bn.running_mean",
             _BN_NAMES["var"]: f"{timm}.bn.running_var"}
    for short, timm_name in names.items():
      name = f"{prefix}/{short}"
      if name not in tensors:
        missing.append(name)
        continue
      value = np.asarray(tensors[name], np.float32)
      kernel = short == "weights"
      got = (value.shape[:2] + value.shape[3:]) if value.ndim == 4 else value.shape
      if got != ((*conv.kernel, conv.depth) if kernel else (conv.depth,)):
        want = (f"[{conv.kernel[0]}, {conv.kernel[1]}, in, {conv.depth}]" if kernel else
                f"[{conv.depth}]")
        raise CheckpointMismatchError(
            f"{name} has shape {value.shape}; the full Inception v3 needs {want}.")
      # slim HWIO -> timm OIHW, contiguous (safetensors writes the raw buffer).
      out[timm_name] = np.ascontiguousarray(value.transpose(3, 2, 0, 1)) if kernel else value
      used.add(name)
    out[f"{timm}.bn.weight"] = np.ones((conv.depth,), np.float32)  # slim has no scale
  _check_all_used(tensors, used, missing, "expected slim's inception_v3 (inception_v3_2016_08_28)")
  return out


def _check_all_used(tensors: dict, used: set[str], missing: list[str], what_to_do: str) -> None:
  """Every variable of the checkpoint is used (but the ignored heads), and none is missing."""
  if missing:
    raise CheckpointMismatchError(
        f"Missing from the checkpoint: {_shortlist(missing)} ({len(missing)} in all).")
  extra = sorted(n for n in tensors.keys() - used if not IGNORED.match(n))
  if extra:
    raise CheckpointMismatchError(
        f"Unexpected variables in the checkpoint: {_shortlist(extra)} ({len(extra)} in all); "
        f"{what_to_do}.")


def vocab_size(config: ml_collections.ConfigDict) -> int:
  """Rows of the model's word embedding under the config (the word dict, else the dataset)."""
  if config.data.vocab_file:
    return text.Vocabulary.from_word_dict(epath.Path(config.data.vocab_file).expanduser()).size
  return input_pipeline.prepare(config.data).vocab.size


def write_workdir(config: ml_collections.ConfigDict, converted: Converted,
                  workdir: str | os.PathLike, source: str) -> None:
  """config.json and checkpoints/<step> as train.py writes them (fresh optimizer state)."""
  workdir = epath.Path(workdir)
  if (workdir / "checkpoints").exists() and any((workdir / "checkpoints").iterdir()):
    raise FileExistsError(f"{workdir / 'checkpoints'} already holds checkpoints; "
                          "convert into an empty workdir.")
  workdir.mkdir(parents=True, exist_ok=True)
  params = jax.tree.map(jnp.asarray, converted.variables["params"])
  batch_stats = jax.tree.map(jnp.asarray, converted.variables.get("batch_stats", {}))
  tx = train.make_optimizer(config, 1, params)
  state = train.TrainState(step=jnp.asarray(converted.step, jnp.int32), params=params,
                           batch_stats=batch_stats, opt_state=tx.init(params))
  train.write_config(config, workdir)
  ckpt = checkpointing.Checkpoints(workdir, keep=1)
  try:
    ckpt.save(converted.step, state, {"converted_from": source})
    ckpt.wait()
  finally:
    ckpt.close()


def convert_to_workdir(checkpoint: str, config: ml_collections.ConfigDict,
                       workdir: str | os.PathLike) -> Converted:
  """Reads, maps and writes; returns what was written."""
  converted = convert(read_checkpoint(checkpoint),
                      abstract_variables(config, vocab_size(config)), unused_groups(config))
  write_workdir(config, converted, workdir, os.fspath(checkpoint))
  return converted


def convert_inception(checkpoint: str, out: str | os.PathLike) -> None:
  """slim ImageNet checkpoint -> timm-named .safetensors (model.inception.weights reads it)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  if not os.fspath(out).endswith(".safetensors"):
    raise ValueError(f"--out must end with .safetensors (the format model.inception.weights "
                     f"reads), got {out}.")
  save_file(inception_to_timm(read_checkpoint(checkpoint)), os.fspath(out))


_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "TensorFlow checkpoint (V1 file or V2 prefix).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variants] of the model.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output workdir (config.json + checkpoints/).")
_INCEPTION_ONLY = flags.DEFINE_bool("inception_only", False,
                                    "Convert slim's ImageNet Inception v3 into --out.")
_OUT = flags.DEFINE_string("out", None, "With --inception_only: the .safetensors to write.")


def main(argv: list[str]) -> None:
  del argv
  if not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint is required.")
  if _INCEPTION_ONLY.value:
    if not _OUT.value:
      raise app.UsageError("--inception_only needs --out=FILE.safetensors.")
    convert_inception(_CHECKPOINT.value, _OUT.value)
    print(f"Wrote {_OUT.value}; train from it with "
          f"--config.model.inception.weights={_OUT.value}")
    return
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required (or --inception_only --out).")
  converted = convert_to_workdir(_CHECKPOINT.value, _CONFIG.value, _WORKDIR.value)
  for name in converted.zeroed:
    logging.info("Not in the source graph (unused by this variant), set to zeros: %s", name)
  print(f"Wrote {_WORKDIR.value} (step {converted.step}); evaluate it with "
        f"python -m bilstm_jax.evaluation --workdir={_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main)
