"""Orbax checkpoints of the train state and the data iterator's position.

`<workdir>/checkpoints/<step>` keeps the last K; `<workdir>/best/<step>` keeps the
one with the lowest validation loss. Every process takes part in saving and
restoring (each writes its own shards); saves are asynchronous.
"""

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from bilstm_jax import input_pipeline
from bilstm_jax.models.outfit_lstm import OutfitModel


def _valid_loss(metrics: dict) -> float:
  return metrics["valid_loss"]


class Checkpoints:
  """The last `keep` checkpoints, plus the best by validation loss."""

  def __init__(self, workdir: str | os.PathLike, keep: int):
    workdir = epath.Path(workdir)
    self.last = ocp.CheckpointManager(
        workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    self.best = ocp.CheckpointManager(
        workdir / "best",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=_valid_loss, best_mode="min",
            keep_checkpoints_without_metrics=False, create=True))

  def save(self, step: int, state: Any, data_state: dict, valid_loss: float | None = None) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state))
    self.last.save(step, args=args, force=True)
    if valid_loss is not None:
      self.best.save(step, args=args, metrics={"valid_loss": float(valid_loss)}, force=True)

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
    """The newest checkpoint that restores, or None; a broken one is skipped with a warning."""
    for step in sorted(self.last.all_steps(), reverse=True):
      try:
        restored = self.last.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # a checkpoint cut off mid-write: fall back to the one before
        logging.warning("Checkpoint %s in %s is unreadable (%s: %s); trying the previous one.",
                        step, self.last.directory, type(e).__name__, e)
        continue
      return restored.state, restored.data
    return None

  def wait(self) -> None:
    self.last.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.last.close()
    self.best.close()


def restore_variables(workdir: str | os.PathLike, which: str = "last") -> tuple[dict, int]:
  """Model variables ({'params', 'batch_stats'}) and step of a workdir's newest checkpoint.

  `which` is "last" or "best" (lowest validation loss).
  """
  directory = epath.Path(workdir) / {"last": "checkpoints", "best": "best"}[which]
  options = (ocp.CheckpointManagerOptions(read_only=True) if which == "last" else
             ocp.CheckpointManagerOptions(read_only=True, best_fn=_valid_loss, best_mode="min"))
  handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, options=options, item_handlers=handlers) as manager:
    step = manager.latest_step() if which == "last" else manager.best_step()
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {directory}: train first, e.g. "
                              f"python -m bilstm_jax.main --config=... --workdir={workdir}")
    # Onto this process's first device, whatever layout (devices, processes) saved it.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          manager.item_metadata(step).state)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  state = restored.state
  variables = {"params": state["params"]}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  return jax.tree.map(jax.numpy.asarray, variables), int(step)


def load_inference(workdir: str | os.PathLike, which: str = "last"
                   ) -> tuple[ml_collections.ConfigDict, OutfitModel, dict, input_pipeline.Dataset, int]:
  """Everything needed to run a trained model: its config, model, variables, data and step."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {workdir} is not a bilstm-jax workdir "
                            "(python -m bilstm_jax.main writes it).")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  dataset = input_pipeline.prepare(config.data)
  model = OutfitModel(config.model, vocab_size=dataset.vocab.size, feature_dim=dataset.feature_dim)
  variables, step = restore_variables(workdir, which)
  return config, model, variables, dataset, step
