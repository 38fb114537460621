"""FITB questions and compatibility lines under both evaluation protocols.

original:  wrong FITB candidates and negative-outfit items are random items of
           other outfits, of any category (Han et al.).
resampled: wrong FITB candidates share the blank's category, and a negative
           outfit copies the category list of a real outfit (Vasileva et al.
           2018), so item type alone cannot separate right from wrong.

Everything is a pure function of its inputs and a seed. An outfit is a list of
(item id, category id) pairs in outfit order.
"""

from collections.abc import Sequence
import collections

import numpy as np

Outfit = Sequence[tuple[str, int]]
NUM_CANDIDATES = 4  # the correct answer first, then 3 wrong ones
_TRIES = 100  # random draws before a pick counts as impossible


def fitb_questions(outfits: Sequence[Outfit], seed: int,
                   num_questions: int | None = None) -> list[dict]:
  """Original-protocol FITB: one blank per outfit, 3 random items of other outfits.

  Args:
    outfits: the test outfits (at least 2 items each, at least 4 outfits).
    seed: seeds the choice of outfits, blanks and candidates.
    num_questions: questions to make (default: one per outfit, capped there).

  Returns:
    Dicts in the file format: question (item ids without the blank), answers
    (4 item ids, the first correct), blank_position (1-based).
  """
  rng = np.random.default_rng([seed, 0])
  n = len(outfits) if num_questions is None else min(num_questions, len(outfits))
  questions = []
  for o in sorted(rng.choice(len(outfits), size=n, replace=False)):
    items = [i for i, _ in outfits[o]]
    blank = int(rng.integers(len(items)))
    wrong = _distinct(rng, 3, lambda: _random_item(rng, outfits, exclude={o}))
    questions.append({"question": items[:blank] + items[blank + 1:],
                      "answers": [items[blank], *wrong], "blank_position": blank + 1})
  return questions


def resample_fitb(questions: Sequence[dict], outfits: Sequence[Outfit],
                  seed: int) -> tuple[list[dict], int]:
  """Replaces each question's wrong candidates by items of the blank's category.

  Candidates come from other outfits than the blank's. Returns the resampled
  questions and the number dropped because fewer than 3 such items exist.
  """
  rng = np.random.default_rng([seed, 1])
  owner = {i: (o, c) for o, outfit in enumerate(outfits) for i, c in outfit}
  by_category = _by_category(outfits)
  kept, dropped = [], 0
  for q in questions:
    answer = q["answers"][0]
    o, c = owner[answer]
    pool = [i for i, oi in by_category[c] if oi != o]
    if len(set(pool)) < NUM_CANDIDATES - 1:
      dropped += 1
      continue
    wrong = _distinct(rng, 3, lambda: pool[rng.integers(len(pool))])
    kept.append({**q, "answers": [answer, *wrong]})
  return kept, dropped


def compat_lines(outfits: Sequence[Outfit], seed: int, num_negatives: int,
                 matched: bool) -> list[tuple[int, list[str]]]:
  """Every outfit as a positive, then `num_negatives` negatives.

  A negative takes the length (matched: the category list) of a random real
  outfit and fills each position with an item of a different outfit, no two
  from the same outfit and none from the template. Gives fewer negatives when
  the outfits are too few to fill templates (tiny or odd data): callers count.
  """
  rng = np.random.default_rng([seed, 2 + int(matched)])
  by_category = _by_category(outfits)
  lines = [(1, [i for i, _ in outfit]) for outfit in outfits]
  for _ in range(_TRIES * (num_negatives + 1)):
    if len(lines) == len(outfits) + num_negatives:
      break
    template = int(rng.integers(len(outfits)))
    used, items = {template}, []
    for _, category in outfits[template]:
      if matched:
        pick = _pick(rng, by_category[category], used)
      else:
        pick = _pick_any(rng, outfits, used)
      if pick is None:
        break  # a category too rare for this template: draw another one
      items.append(pick[0])
      used.add(pick[1])
    else:
      lines.append((0, items))
  return lines


def _by_category(outfits: Sequence[Outfit]) -> dict[int, list[tuple[str, int]]]:
  pools = collections.defaultdict(list)
  for o, outfit in enumerate(outfits):
    for i, c in outfit:
      pools[c].append((i, o))
  return pools


def _random_item(rng, outfits, exclude):
  pick = _pick_any(rng, outfits, exclude)
  if pick is None:
    raise ValueError("too few outfits to draw candidates from other outfits")
  return pick[0]


def _pick_any(rng, outfits, exclude):
  for _ in range(_TRIES):
    o = int(rng.integers(len(outfits)))
    if o not in exclude:
      return outfits[o][int(rng.integers(len(outfits[o])))][0], o
  return None


def _pick(rng, pool, exclude):
  for _ in range(_TRIES):
    item, o = pool[int(rng.integers(len(pool)))]
    if o not in exclude:
      return item, o
  return None


def _distinct(rng, k, draw):
  picks = []
  for _ in range(_TRIES * k):
    item = draw()
    if item not in picks:
      picks.append(item)
      if len(picks) == k:
        return picks
  raise ValueError(f"could not draw {k} distinct candidates")
