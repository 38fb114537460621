r"""Benchmark: FITB and compatibility AUC on a Maryland-sized test set, vs a per-outfit loop.

  python bench/evaluation.py [--outfits=3076] [--lines=7000] [--loop_outfits=200]

Maryland's test split: 3,076 outfits of 3-8 items (about 17,000 items), about
7,000 compatibility lines; the paper's model (E = 512, 512 LSTM units) with
random weights and random item embeddings (the cost does not depend on them).
The loop is the original's method (one outfit at a time: the LSTM, then a
float64 softmax against every item); it runs on `loop_outfits` lines and is
extrapolated, after checking that both give the same scores there. FITB runs
one question per outfit (a random blank, the right item and 3 random ones).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import common
from bilstm_jax.evaluation import compatibility, features as features_lib, fitb
from bilstm_jax.evaluation.predictor import Predictor, rule_from_config
from bilstm_jax.models.outfit_lstm import OutfitModel


def _loop(model, variables, feats, outfits):
  """The original's method (xthan/polyvore fashion_compatibility.py), one outfit at a time.

  As there, the candidates (every item + END) are a float64 matrix (its
  `test_feat = np.zeros(...)`), each direction's predictions go through one
  np.dot against all of them, and the score is the mean log-softmax of the
  targets. The LSTM runs once per outfit here, where the original ran a session
  per step, so this loop is if anything faster than the original.
  """
  cands = np.concatenate([feats.rnn, np.zeros((1, feats.dim))]).astype(np.float64)
  predict = jax.jit(lambda v, x: model.apply(v, x, jnp.array([x.shape[1]]), False,
                                             method=OutfitModel.predict))
  end = len(feats)
  scores = []
  for rows in outfits.rows:
    fwd, bwd = predict(variables, feats.rnn[rows][None])
    total = 0.0
    for pred, targets in ((fwd[0], list(rows[1:]) + [end]), (bwd[0], [end] + list(rows[:-1]))):
      logits = np.dot(np.asarray(pred), cands.T)
      top = logits.max(axis=1, keepdims=True)
      logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
      total += float(np.mean(logp[np.arange(len(rows)), targets]))
    scores.append(total)
  return np.array(scores)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--outfits", type=int, default=3076)
  parser.add_argument("--lines", type=int, default=7000)
  parser.add_argument("--loop_outfits", type=int, default=200)
  parser.add_argument("--max_rows", type=int, default=4096)
  parser.add_argument("--json_out", default="", help="write the results here")
  args = parser.parse_args()
  jax.config.update("jax_threefry_partitionable", False)  # fast init compiles on CPUs

  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 9, size=args.outfits)
  ids = [f"{o}_{k}" for o, n in enumerate(lengths) for k in range(1, n + 1)]
  config = common.load_config()  # the paper's sizes
  e = config.model.embed_dim
  feats = features_lib.from_arrays(ids, rng.normal(size=(len(ids), e)) * 0.05,
                                   rng.normal(size=(len(ids), e)) * 0.05)
  lines = [{"label": 1, "items": [f"{o}_{k}" for k in range(1, n + 1)]}
           for o, n in enumerate(lengths)]
  while len(lines) < args.lines:
    n = int(rng.integers(3, 9))
    lines.append({"label": 0, "items": [ids[i] for i in rng.choice(len(ids), n, replace=False)]})
  model = OutfitModel(config.model, vocab_size=10, feature_dim=8)
  variables = jax.jit(lambda: model.init(jax.random.key(0), {
      "features": jnp.zeros((1, 8, 8)), "lengths": jnp.ones(1, jnp.int32),
      "tokens": jnp.zeros((1, 8, 4), jnp.int32)}, train=False))()
  predictor = Predictor(model, variables)
  outfits = compatibility.prepare(lines, feats)
  env = common.environment()
  print(common.describe(env))
  print(f"{len(lines)} lines, {len(feats)} candidate items (+ END), E = {e}")

  rows = 2 * sum(len(r) for r in outfits.rows)  # (item, direction) predictions
  flops = 2.0 * rows * (len(feats) + 1) * e  # their logits against every item + END
  h = config.model.hidden_dim
  lstm_flops = 2.0 * rows * (e + h) * 4 * h  # the LSTM's gate matmuls
  peak = common.matmul_peak("float32")["flops_per_s"]
  floor_s = (flops + lstm_flops) / peak
  print(f"{rows} predictions x {len(feats) + 1} candidates: {flops / 1e12:.2f} TFLOP of logits "
        f"+ {lstm_flops / 1e12:.2f} of LSTM; this machine's float32 matmul now: "
        f"{peak / 1e9:.0f} GFLOP/s -> floor {floor_s:.1f} s")
  fast_s = []
  for label in ("fast, first call (compiles)", "fast, second call"):
    t = time.perf_counter()
    f, b = compatibility.lstm_scores(predictor, feats, outfits, max_rows=args.max_rows)
    auc = compatibility.auc(outfits.labels, f + b)
    fast_s.append(time.perf_counter() - t)
    print(f"{label}: {fast_s[-1]:.2f} s (AUC {auc:.3f})")

  questions = []
  for o, n in enumerate(lengths):
    blank = int(rng.integers(1, n + 1))
    others = [ids[i] for i in rng.choice(len(ids), 3, replace=False)]
    questions.append({"question": [f"{o}_{k}" for k in range(1, n + 1) if k != blank],
                      "answers": [f"{o}_{blank}"] + others, "blank_position": blank})
  fitb_s = []
  for label in ("first call (compiles)", "second call"):
    t = time.perf_counter()
    q = fitb.prepare(questions, feats)
    scores, _ = fitb.lstm_scores(predictor, feats, q, rule_from_config(config))
    fitb_s.append(time.perf_counter() - t)
    print(f"FITB, {len(q.keys)} questions, {label}: {fitb_s[-1]:.2f} s "
          f"(accuracy {np.mean(np.argmax(scores, 1) == 0):.3f})")

  sub = compatibility.Outfits(keys=outfits.keys[:args.loop_outfits],
                              rows=outfits.rows[:args.loop_outfits],
                              labels=outfits.labels[:args.loop_outfits], skipped={})
  _loop(model, variables, feats, compatibility.Outfits(sub.keys[:8], sub.rows[:8], sub.labels[:8],
                                                       {}))  # compile every length first
  t = time.perf_counter()
  slow = _loop(model, variables, feats, sub)
  per = (time.perf_counter() - t) / len(sub.rows)
  fast = (f + b)[:args.loop_outfits]
  diff = float(np.max(np.abs(fast - slow)))
  print(f"per-outfit loop: {per * 1e3:.1f} ms per outfit -> {per * len(lines):.0f} s for all "
        f"{len(lines)} lines (measured on {len(sub.rows)}); max |fast - loop| = {diff:.2e}; "
        f"the vectorised AUC is {per * len(lines) / fast_s[1]:.0f}x faster (at most "
        f"{per * len(lines) / floor_s:.0f}x at the matmul peak)")
  common.write_json(args.json_out, {
      "benchmark": "evaluation", "environment": env, "lines": len(lines), "items": len(feats),
      "embed_dim": e, "logit_flops": flops, "lstm_flops": lstm_flops,
      "matmul_flops_per_s": peak, "floor_s": floor_s,
      "compat_first_s": fast_s[0], "compat_s": fast_s[1], "auc": auc,
      "fitb_questions": len(questions), "fitb_first_s": fitb_s[0], "fitb_s": fitb_s[1],
      "loop_s_per_outfit": per, "loop_outfits": len(sub.rows), "loop_total_s": per * len(lines),
      "speedup": per * len(lines) / fast_s[1], "speedup_at_peak": per * len(lines) / floor_s,
      "max_abs_diff": diff})


if __name__ == "__main__":
  main()
