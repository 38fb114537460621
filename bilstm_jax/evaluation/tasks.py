"""The evaluation run after training: features, FITB, compatibility AUC, generated outfits.

Every process runs the same (deterministic) computations on host copies of the
variables; process 0 alone writes files and prints.
"""

import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from bilstm_jax.evaluation import compatibility, fitb, generation, report
from bilstm_jax.evaluation.errors import EvaluationError
from bilstm_jax.evaluation.features import ItemFeatures, extract
from bilstm_jax.evaluation.predictor import Predictor, check_variables, model_info, rule_from_config

QUESTION_SPLITS = ("test",)  # the FITB and compatibility files are made from the test split
PROTOCOLS = ("original", "resampled")
FEATURES_DIR = "features"
GENERATED_DIR = "generated"


def host_variables(variables: Any) -> Any:
  """Variables as host numpy arrays (gathered from all processes when sharded across them)."""
  def get(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
  return jax.tree.map(get, variables)


def features_path(workdir: str | os.PathLike, split: str) -> epath.Path:
  return epath.Path(workdir) / FEATURES_DIR / f"{split}.npz"


def split_features(model: Any, variables: Any, dataset: Any, split: str, batch_size: int,
                   workdir: str | os.PathLike | None = None, step: int | None = None
                   ) -> ItemFeatures:
  """The split's item features, from workdir/features/<split>.npz when it holds this step's."""
  path = features_path(workdir, split) if workdir is not None else None
  if path and path.exists():
    try:
      feats, meta = ItemFeatures.load(path)
      if meta.get("step") == step and feats.dim == model.config.embed_dim:
        return feats
    except EvaluationError as e:
      logging.warning("Ignoring the feature cache: %s", e)
  feats = extract(model, variables, dataset.item_table(split), batch_size)
  if path and jax.process_index() == 0:
    feats.save(path, step=-1 if step is None else step, split=split)
  return feats


def check_split(split: str) -> None:
  if split not in QUESTION_SPLITS:
    raise EvaluationError(f"eval split {split!r}: FITB questions and compatibility lines exist "
                          f"for {', '.join(QUESTION_SPLITS)} only; set config.eval.splits to "
                          f"({', '.join(repr(s) for s in QUESTION_SPLITS)},)")


def check_protocol(protocol: str) -> None:
  if protocol not in PROTOCOLS:
    raise EvaluationError(f"eval protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")


def example_batch(model: Any, dataset: Any) -> dict[str, np.ndarray]:
  """One padded outfit of the right shapes (zeros), for checking variables."""
  t = dataset.max_items
  batch = {"lengths": np.ones(1, np.int32), "mask": np.ones((1, t), bool),
           "tokens": np.zeros((1, t, dataset.max_tokens), np.int32)}
  if model.feature_dim is not None:
    batch["features"] = np.zeros((1, t, model.feature_dim), np.float32)
  else:
    s = dataset.image_size
    batch["images"] = np.zeros((1, t, s, s, 3), np.float32)
  return batch


def item_images(dataset: Any, split: str):
  """ids -> model-input images ([-1, 1]) of the split, or None each in cached-feature mode."""
  table, row = None, {}
  def images(ids: Sequence[str]) -> list[Any]:
    nonlocal table
    if dataset.feature_dim is not None:
      return [None] * len(ids)
    if table is None:
      table = dataset.item_table(split)
      row.update((i, r) for r, i in enumerate(table.ids))
    found = [row.get(i) for i in ids]
    rows = [r for r in found if r is not None]
    decoded = iter(table.inputs(rows)) if rows else iter(())
    return [None if r is None else next(decoded) for r in found]
  return images


def generation_queries(features: ItemFeatures, dataset: Any, split: str, count: int
                       ) -> list[list[str]]:
  """`count` single-item queries: the first item of evenly spaced outfits of the split."""
  outfits = dataset.outfits(split)
  n = len(outfits)
  picks = sorted({int(i) for i in np.linspace(0, n - 1, min(count, n))}) if n else []
  queries = []
  for o in picks:
    ids = [i for i in outfits[o]["item_ids"] if i in features.index]
    if ids:
      queries.append(ids[:1])
  return queries


def run_generation(generator: generation.Generator, queries: list[list[str]], out_dir: str,
                   images, text_vector: np.ndarray | None = None, text: str = "",
                   text_weight: float = 2.0) -> list[dict[str, Any]]:
  """Generates and saves one strip per query; returns what was written."""
  written = []
  for k, query in enumerate(queries):
    out = generator.generate(query, text_vector, text_weight, text)
    png, js = generation.save(out, epath.Path(out_dir) / f"outfit_{k}", images)
    written.append({"query": query, "items": out.ids, "png": png, "json": js})
  return written


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, model: Any,
             variables: Any, dataset: Any, step: int, *, config_name: str | None = None,
             tasks: Sequence[str] = ("fitb", "compat", "generate")) -> dict[str, Any]:
  """Runs the evaluation tasks on config.eval.splits x config.eval.protocols.

  Writes workdir/report.json (merged with an existing one), the per-question
  scores under workdir/scores/ (for late fusion), the item features under
  workdir/features/, config.eval.generate PNG strips under workdir/generated/,
  and prints a table (process 0). Returns the report.
  """
  workdir = os.fspath(workdir)
  for split in config.eval.splits:
    check_split(split)
  for protocol in config.eval.protocols:
    check_protocol(protocol)
  variables = host_variables(variables)
  check_variables(model, variables, example_batch(model, dataset))
  rule = rule_from_config(config)
  predictor = Predictor(model, variables) if rule.uses_lstm else None
  lead = jax.process_index() == 0
  metrics, generated = [], []
  for split in config.eval.splits:
    feats = split_features(model, variables, dataset, split, config.eval.batch_size, workdir, step)
    for protocol in config.eval.protocols:
      meta = {"protocol": protocol, "split": split, "step": step, "rule": rule.name}
      if "fitb" in tasks:
        result = fitb.evaluate(dataset.questions("fitb", protocol), feats, rule, predictor)
        metrics.append(report.fitb_metric(result, protocol, split))
        if lead:
          result.save(report.scores_path(workdir, "fitb", protocol, split), **meta)
      if "compat" in tasks:
        result = compatibility.evaluate(dataset.questions("compat", protocol), feats, rule,
                                        predictor)
        metrics.append(report.compat_metric(result, protocol, split))
        if lead:
          result.save(report.scores_path(workdir, "compat", protocol, split), **meta)
    if "generate" in tasks and config.eval.generate > 0:
      if not rule.uses_lstm:
        logging.info("No outfit generation: the %s model has no LSTM to decode with.", rule.name)
      elif lead:
        generator = generation.Generator(predictor, feats, rule,
                                         end_threshold=config.eval.end_threshold or None)
        queries = generation_queries(feats, dataset, split, config.eval.generate)
        generated += run_generation(generator, queries,
                                    epath.Path(workdir) / GENERATED_DIR, item_images(dataset, split))
  header = {"workdir": str(workdir), "data": dataset.source, "checkpoint_step": step,
            "model": model_info(config)}
  if config_name is not None:
    header["config"] = config_name
  if generated:
    header["generated"] = [g["png"] for g in generated]
  out = {**header, "metrics": metrics}
  if lead:
    out = report.write_report(report.report_path(workdir), metrics, **header)
    print(report.format_table(metrics), flush=True)
  return out

