r"""Evaluation tasks on a workdir's checkpoint.

  python -m bilstm_jax.evaluation --workdir=DIR                       # all: FITB, AUC, strips
  python -m bilstm_jax.evaluation --workdir=DIR --task=fitb --protocols=resampled
  python -m bilstm_jax.evaluation --workdir=DIR --task=compat
  python -m bilstm_jax.evaluation --workdir=DIR --task=extract        # DIR/features/test.npz
  python -m bilstm_jax.evaluation --workdir=DIR --task=generate --query=ID[,ID...] \
      [--text="blue jeans"] [--out=DIR/generated/mine]
  python -m bilstm_jax.evaluation --workdir=DIR --task=score --images=a.jpg,b.jpg,c.jpg \
      [--order=category|best|given]
  python -m bilstm_jax.evaluation --workdir=DIR --task=complete --images=top.jpg,shoes.jpg \
      [--blank=2] [--top=5] [--out=DIR/completed]

Images may be given in any order: --order=category sorts them into the model's
order (Polyvore's: tops, bottoms, shoes, bags, accessories) by each image's
nearest catalogue item; --order=given keeps yours. The catalogue is the test
split's items. Late fusion of several workdirs: python -m bilstm_jax.evaluation.fusion.
"""

import json
import os
import sys
from typing import Any

import numpy as np
from absl import app, flags

from bilstm_jax import checkpointing, input_pipeline
from bilstm_jax.evaluation import generation, report, scoring, tasks
from bilstm_jax.evaluation.errors import EvaluationError, NotSupportedError
from bilstm_jax.evaluation.features import encoder
from bilstm_jax.evaluation.predictor import Predictor, rule_from_config

TASKS = ("all", "fitb", "compat", "generate", "score", "complete", "extract")

def run(task: str, config: Any, model: Any, variables: Any, dataset: Any, step: int,
        workdir: str, **opts: Any) -> Any:
  """One task on restored (config, model, variables, dataset, step); what main calls."""
  split = opts.get("split", "test")
  if task in ("all", "fitb", "compat"):
    protocols = opts.get("protocols") or config.eval.protocols
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.eval.protocols = tuple(protocols)
      cfg.eval.splits = (split,)
    chosen = ("fitb", "compat", "generate") if task == "all" else (task,)
    return tasks.evaluate(cfg, workdir, model, variables, dataset, step, tasks=chosen)
  variables = tasks.host_variables(variables)
  feats = tasks.split_features(model, variables, dataset, split, config.eval.batch_size,
                               workdir, step)
  rule = rule_from_config(config)
  if task == "extract":
    path = tasks.features_path(workdir, split)
    print(f"{len(feats)} items of the {split} split: {path} (ids, vse, rnn, categories)")
    return path
  predictor = Predictor(model, variables) if rule.uses_lstm else None
  if task == "generate":
    return _generate(config, model, variables, dataset, feats, predictor, rule, workdir, split, opts)
  vse, rnn, paths = _user_items(config, model, variables, opts.get("images"))
  if task == "score":
    return _score(feats, predictor, rule, vse, rnn, paths, workdir, split, opts)
  if task == "complete":
    return _complete(dataset, feats, predictor, rule, vse, rnn, paths, workdir, split, opts)
  raise EvaluationError(f"Unknown task {task!r}; choose from {', '.join(TASKS)}")


def _generate(config, model, variables, dataset, feats, predictor, rule, workdir, split, opts):
  query = opts.get("query")
  if not query:
    raise EvaluationError("--task=generate needs --query=ITEM_ID[,ITEM_ID...] (ids of the "
                          f"{split} split, e.g. {', '.join(map(str, feats.ids[:3]))})")
  text = opts.get("text") or ""
  vec = generation.text_vector(model, variables, dataset.vocab, text) if text else None
  threshold = opts.get("end_threshold")
  threshold = config.eval.end_threshold if threshold is None else threshold
  gen = generation.Generator(predictor, feats, rule, end_threshold=threshold or None,
                             allow_repeats=opts.get("allow_repeats", False))
  out = gen.generate(list(query), vec, config.eval.text_weight, text)
  prefix = opts.get("out") or os.path.join(workdir, tasks.GENERATED_DIR,
                                           "query_" + "_".join(query)[:80])
  png, js = generation.save(out, prefix, tasks.item_images(dataset, split))
  print(" ".join(f"[{i}]" if q else i for i, q in zip(out.ids, out.is_query)))
  print(f"Wrote {png} and {js}")
  return out


def _user_items(config, model, variables, paths):
  if not paths:
    raise EvaluationError("--task=score/complete needs --images=FILE[,FILE...]")
  if model.feature_dim is not None:
    raise NotSupportedError("This model was trained on cached encoder features, so it cannot "
                            "read images; score images with a model trained on images.")
  images = scoring.load_images(paths, config.data.image_size)
  vse, rnn = encoder(model, variables)(images)
  return np.asarray(vse), np.asarray(rnn), list(paths)


def _percentile(workdir: str, split: str, score: float) -> str:
  path = report.scores_path(workdir, "compat", "original", split)
  if not path.exists():
    return ""
  saved = report.load_scores(path)
  pos = saved["scores"][saved["labels"] == 1]
  if not len(pos):
    return ""
  return (f"; higher than {100 * np.mean(pos < score):.0f}% of the {len(pos)} real {split} "
          "outfits")


def _score(feats, predictor, rule, vse, rnn, paths, workdir, split, opts):
  res = scoring.score_outfit(predictor, feats, rule, vse, rnn, order=opts.get("order", "category"))
  name = lambda k: os.path.basename(paths[k])
  if rule.uses_lstm:
    print(f"Compatibility score: {res.score:.3f} (forward {res.forward:.3f}, backward "
          f"{res.backward:.3f}; -mean cross-entropy over {len(feats)} {split} items + END, "
          f"higher is better{_percentile(workdir, split, res.score)})")
  else:
    print(f"Compatibility score: {res.score:.3f} (mean pairwise cosine, {rule.name} model)")
  print("Order scored: " + ", ".join(name(k) for k in res.order))
  for it in res.items:
    if not rule.uses_lstm:
      continue
    line = (f"  {it.index + 1}. {name(it.source)}: P = {it.probability:.4f}, rank {it.rank} of "
            f"{len(feats)} catalogue items")
    line += (f" -> a better fit: {it.better_id} (P = {it.better_probability:.4f})"
             if it.better_id else " -> no catalogue item fits better")
    print(line)
  if opts.get("out"):
    with open(opts["out"], "w") as f:
      json.dump({"images": paths, "order": [paths[k] for k in res.order], "score": res.score,
                 "forward": res.forward, "backward": res.backward,
                 "items": [vars(it) | {"image": paths[it.source]} for it in res.items]}, f, indent=1)
  return res


def _complete(dataset, feats, predictor, rule, vse, rnn, paths, workdir, split, opts):
  blank = opts.get("blank")
  best = scoring.complete(predictor, feats, rule, vse, rnn,
                          None if blank is None else blank - 1, opts.get("top", 5))
  for k, (item, p) in enumerate(best, start=1):
    print(f"  {k}. {item}  P = {p:.4f}")
  pos = len(paths) if blank is None else blank - 1
  user_images = list(scoring.load_images(paths, 128))
  ids = [os.path.basename(p) for p in paths]
  images = tasks.item_images(dataset, split)([best[0][0]])
  strip = generation.render_strip(user_images[:pos] + images + user_images[pos:],
                                  [True] * pos + [False] + [True] * (len(paths) - pos),
                                  ids[:pos] + [best[0][0]] + ids[pos:])
  prefix = opts.get("out") or os.path.join(workdir, "completed")
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  strip.save(prefix + ".png")
  with open(prefix + ".json", "w") as f:
    json.dump({"images": paths, "blank_position": pos + 1,
               "candidates": [{"id": i, "probability": p} for i, p in best]}, f, indent=1)
  print(f"Wrote {prefix}.png and {prefix}.json")
  return best


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  try:
    config, model, variables, dataset, step = checkpointing.load_inference(f.workdir)
    run(f.task, config, model, variables, dataset, step, f.workdir,
        split=f.split, protocols=f.protocols, query=f.query, text=f.text, images=f.images,
        order=f.order, blank=f.blank, top=f.top, out=f.out, end_threshold=f.end_threshold,
        allow_repeats=f.allow_repeats)
  except (EvaluationError, input_pipeline.DataNotFoundError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


def define_flags() -> None:
  """The command line's flags (defined on demand, so importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "A training workdir (checkpoints, config.json).")
  flags.DEFINE_enum("task", "all", TASKS, "What to run.")
  flags.DEFINE_string("split", "test", "Split whose items are the catalogue / questions.")
  flags.DEFINE_list("protocols", None, "FITB/compat protocols (default: the config's).")
  flags.DEFINE_list("query", None, "generate: query item ids, in any number.")
  flags.DEFINE_string("text", "", "generate: a text query to re-rank generated items by.")
  flags.DEFINE_list("images", None, "score/complete: your item image files.")
  flags.DEFINE_enum("order", "category", ("category", "best", "given"),
                    "score: how to order your images (see the module doc).")
  flags.DEFINE_integer("blank", None, "complete: 1-based position of the blank "
                       "(default: after the last image).")
  flags.DEFINE_integer("top", 5, "complete: how many catalogue items to list.")
  flags.DEFINE_string("out", None, "generate/complete: output path prefix for .png/.json; "
                      "score: a .json path for the full result.")
  flags.DEFINE_float("end_threshold", None, "generate: stop when END is the best next item "
                     "or P(END) exceeds this (default: the run's config.eval.end_threshold); "
                     "0: only when END is the best.")
  flags.DEFINE_bool("allow_repeats", False, "generate: let an item repeat.")
  flags.mark_flags_as_required(["workdir"])
