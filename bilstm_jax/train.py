"""Training: the train state, the pure loss/step functions, and the loop.

The step is jitted once with explicit shardings over the config's mesh and a
donated state, built abstract-first (eval_shape -> shardings -> jitted init).
"""

import json
import os
import time
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from bilstm_jax import checkpointing, input_pipeline, metrics, sharding
from bilstm_jax.errors import ConfigError
from bilstm_jax.models import inception_v3, losses
from bilstm_jax.models.outfit_lstm import OutfitModel

ENCODER = "InceptionV3"  # the encoder's parameter collection name inside OutfitModel


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """lr halved every `lr_decay_epochs` epochs, staircase (3,463 steps at the paper's batch 10)."""
  t = config.train
  return optax.exponential_decay(
      t.learning_rate, transition_steps=max(int(t.lr_decay_epochs * steps_per_epoch), 1),
      decay_rate=t.lr_decay_factor, staircase=True)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                   params: Any) -> optax.GradientTransformation:
  """Global-norm clipping, then the configured optimiser; a frozen encoder is not updated."""
  lr = learning_rate_schedule(config, steps_per_epoch)
  optimizers = {"sgd": lambda: optax.sgd(lr), "momentum": lambda: optax.sgd(lr, momentum=0.9),
                "adam": lambda: optax.adam(lr)}
  if config.train.optimizer not in optimizers:
    raise ConfigError(f"train.optimizer must be one of {sorted(optimizers)}, "
                      f"got {config.train.optimizer!r}")
  tx = optax.chain(optax.clip_by_global_norm(config.train.clip_norm),
                   optimizers[config.train.optimizer]())
  if config.model.train_inception or ENCODER not in params:
    return tx
  labels = {k: "frozen" if k == ENCODER else "trained" for k in params}
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def _encoder_weight_decay(params: Any) -> jax.Array:
  """slim's l2_regularizer on Inception conv kernels: sum(w^2) / 2."""
  kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(params.get(ENCODER, {}))
             if path[-1].key == "kernel"]
  return 0.5 * sum(jnp.sum(jnp.square(k)) for k in kernels)


def compute_losses(model: OutfitModel, config: ml_collections.ConfigDict, variables: dict,
                   batch: dict, train: bool, rng: jax.Array | None = None
                   ) -> tuple[jax.Array, tuple[dict, Any]]:
  """Weighted total loss, the individual terms, and the updated batch-norm statistics."""
  l = config.loss
  mask = batch["mask"]
  bn_mask = None if config.data.pad_with_last_image else mask
  # Batch statistics move only while a fine-tuned encoder trains.
  bn_moves = train and model.feature_dim is None and config.model.train_inception
  out = model.apply(variables, batch, train=train, bn_mask=bn_mask,
                    rngs={"dropout": rng} if train else None,
                    mutable=["batch_stats"] if bn_moves else False)
  out, updates = out if bn_moves else (out, {})
  lengths = batch["lengths"]
  terms = {}
  if l.forward_weight:
    terms["forward_loss"] = losses.next_item_loss(out["fwd"], out["rnn"], lengths, "forward",
                                                  l.mask_end_negatives)
  if l.backward_weight:
    terms["backward_loss"] = losses.next_item_loss(out["bwd"], out["rnn"], lengths, "backward",
                                                   l.mask_end_negatives)
  if l.vse_weight:
    terms["vse_loss"] = losses.vse_loss(out["vse"], out["text"], jnp.sum(batch["tokens"] > 0, -1),
                                        mask, l.vse_margin)
  if config.model.kind == "siamese":
    terms["siamese_loss"] = losses.siamese_loss(out["vse"], mask, l.siamese_margin)
  total = (l.forward_weight * terms.get("forward_loss", 0.0)
           + l.backward_weight * terms.get("backward_loss", 0.0)
           + l.vse_weight * terms.get("vse_loss", 0.0) + terms.get("siamese_loss", 0.0))
  if train and config.model.train_inception and l.weight_decay:
    terms["weight_decay"] = l.weight_decay * _encoder_weight_decay(variables["params"])
    total = total + terms["weight_decay"]
  terms["loss"] = total
  return total, (terms, updates.get("batch_stats", variables.get("batch_stats")))


def train_step(model: OutfitModel, config: ml_collections.ConfigDict,
               tx: optax.GradientTransformation, state: TrainState, batch: dict
               ) -> tuple[TrainState, dict]:
  """One SGD step; the dropout key is derived from the seed and the step, so resumes are exact."""
  rng = jax.random.fold_in(jax.random.key(config.seed), state.step)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    return compute_losses(model, config, variables, batch, True, rng)

  (_, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  terms["grad_norm"] = optax.tree.norm(grads)
  new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state)
  return new_state, terms


def eval_step(model: OutfitModel, config: ml_collections.ConfigDict, state: TrainState,
              batch: dict) -> dict:
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return compute_losses(model, config, variables, batch, False)[1][0]


def _init_state(model, config, tx_fn, example):
  variables = model.init({"params": jax.random.key(config.seed), "dropout": jax.random.key(0)},
                         example, train=False)
  params = variables["params"]
  tx = tx_fn(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def _load_encoder_weights(state: TrainState, path: str) -> TrainState:
  """Replaces the random encoder weights by an ImageNet weights file."""
  encoder = {"params": state.params[ENCODER], "batch_stats": state.batch_stats[ENCODER]}
  loaded = inception_v3.load(encoder, path)
  return state.replace(params={**state.params, ENCODER: loaded["params"]},
                       batch_stats={**state.batch_stats, ENCODER: loaded["batch_stats"]})


def write_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  if jax.process_index() == 0:
    path = epath.Path(workdir) / "config.json"
    path.write_text(json.dumps(config.to_dict(), indent=2, default=list))


class Trainer(NamedTuple):
  """The jitted steps and the layout of the state they run on."""
  init: Callable[[], TrainState]  # a fresh, sharded state
  train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
  eval_step: Callable[[TrainState, dict], dict]
  abstract_state: TrainState  # shapes, dtypes and shardings, for restoring


def make_trainer(model: OutfitModel, config: ml_collections.ConfigDict, steps_per_epoch: int,
                 example: dict, mesh: jax.sharding.Mesh) -> Trainer:
  """Builds abstract-first: eval_shape -> shardings -> jitted init and steps, compiled once."""
  tx_fn = lambda params: make_optimizer(config, steps_per_epoch, params)
  abstract = jax.eval_shape(lambda: _init_state(model, config, tx_fn, example))
  tx = tx_fn(abstract.params)
  state_sh = sharding.state_shardings(abstract, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return Trainer(
      init=jax.jit(lambda: _init_state(model, config, tx_fn, example), out_shardings=state_sh),
      train_step=jax.jit(lambda s, b: train_step(model, config, tx, s, b),
                         in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                         donate_argnums=0),
      eval_step=jax.jit(lambda s, b: eval_step(model, config, s, b),
                        in_shardings=(state_sh, batch_sh), out_shardings=replicated),
      abstract_state=jax.tree.map(
          lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, state_sh))


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike
          ) -> tuple[OutfitModel, dict, input_pipeline.Dataset, int]:
  """Trains (resuming from `workdir` if it has checkpoints); returns model, variables, data, step."""
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dataset = input_pipeline.prepare(config.data)
  write_config(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  model = OutfitModel(config.model, vocab_size=dataset.vocab.size, feature_dim=dataset.feature_dim)
  steps_per_epoch = max(dataset.num_outfits("train") // config.train.batch_size, 1)
  trainer = make_trainer(model, config, steps_per_epoch,
                         dataset.example_batch(config.train.batch_size), mesh)
  p_train, p_eval = trainer.train_step, trainer.eval_step

  ckpt = checkpointing.Checkpoints(workdir, config.train.keep_checkpoints)
  restored = ckpt.restore_latest(trainer.abstract_state)
  if restored is None:
    state = trainer.init()
    if config.model.inception.weights and dataset.feature_dim is None:
      state = jax.device_put(_load_encoder_weights(state, config.model.inception.weights),
                             jax.tree.map(lambda a: a.sharding, trainer.abstract_state))
    data_state = None
  else:
    state, data_state = restored
    metrics.log(f"Resuming from step {int(state.step)} in {workdir}.")

  batches = input_pipeline.train_batches(dataset, config, process_index=jax.process_index(),
                                         process_count=jax.process_count(), state=data_state)
  writer = metrics.MetricWriter(workdir, config.train.num_steps)
  step = int(state.step)
  pending, t0, t0_step = [], time.perf_counter(), step
  try:
    while step < config.train.num_steps:
      state, terms = p_train(state, sharding.global_batch(next(batches), mesh))
      step += 1
      pending.append((step, terms))
      log_now = step % config.train.log_every == 0 or step == config.train.num_steps
      save_now = step % config.train.checkpoint_every == 0 or step == config.train.num_steps
      eval_now = config.train.eval_every and (step % config.train.eval_every == 0
                                              or step == config.train.num_steps)
      if not (log_now or save_now or eval_now):
        continue
      _check_finite(pending, workdir)
      if log_now:
        elapsed = time.perf_counter() - t0
        rate = (step - t0_step) / max(elapsed, 1e-9)
        writer.write(step, {**jax.device_get(pending[-1][1]),
                            "learning_rate": learning_rate_schedule(config, steps_per_epoch)(step - 1),
                            "steps_per_sec": rate,
                            "outfits_per_sec": rate * config.train.batch_size})
        t0, t0_step = time.perf_counter(), step
      pending = []
      valid_loss = _validate(p_eval, state, dataset, config, mesh) if eval_now else None
      if valid_loss is not None:
        writer.write(step, {"valid_loss": valid_loss})
      if save_now or eval_now:
        ckpt.save(step, state, batches.state(), valid_loss)
  finally:
    batches.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
  metrics.save_curves(workdir)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return model, variables, dataset, step


def _check_finite(pending: list[tuple[int, dict]], workdir: epath.Path) -> None:
  for step, terms in pending:
    loss = float(jax.device_get(terms["loss"]))
    if not np.isfinite(loss):
      raise NonFiniteLossError(
          f"The loss became {loss} at step {step}; stopping. The last good checkpoint in "
          f"{workdir / 'checkpoints'} is kept: lower train.learning_rate or check the data, then "
          "run the same command again to resume from it.")


def _validate(p_eval, state, dataset, config, mesh) -> float:
  """Mean validation loss over `train.valid_batches` batches of the valid split."""
  totals = []
  for i, batch in enumerate(input_pipeline.eval_batches(
      dataset, "valid", config, process_index=jax.process_index(),
      process_count=jax.process_count())):
    if config.train.valid_batches and i >= config.train.valid_batches:
      break
    totals.append(float(p_eval(state, sharding.global_batch(batch, mesh))["loss"]))
  return float(np.mean(totals)) if totals else float("nan")
