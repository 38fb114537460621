"""The text vocabulary and tokenisation of item names (han2017.md section 1).

Ids: 0 pads, word k of the dictionary (0-based line index) is k + 1, and every
unknown word is `unk_id` = len(words) + 1, which has its own embedding row
(the original's UNK fell one past its table).
"""

from collections.abc import Iterable
import collections
import os
import pathlib

PAD_ID = 0


class Vocabulary:
  """Words in id order with their training counts."""

  def __init__(self, words: list[str], counts: list[int]):
    if len(set(words)) != len(words):
      raise ValueError("vocabulary words must be unique")
    self.words = list(words)
    self.counts = list(counts)
    self._ids = {w: i + 1 for i, w in enumerate(self.words)}

  @classmethod
  def from_word_dict(cls, path: str | os.PathLike) -> "Vocabulary":
    """Loads a word dict file: one `<word> <count>` per line, in id order."""
    words, counts = [], []
    for n, line in enumerate(pathlib.Path(path).read_text().splitlines(), start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 2 or not fields[1].isdigit():
        raise ValueError(f"{path}:{n}: expected '<word> <count>', got {line!r}")
      words.append(fields[0])
      counts.append(int(fields[1]))
    if len(set(words)) != len(words):
      dup = next(w for w, c in collections.Counter(words).items() if c > 1)
      raise ValueError(f"{path}: word {dup!r} appears twice")
    return cls(words, counts)

  @classmethod
  def build(cls, names: Iterable[str], min_count: int) -> "Vocabulary":
    """The original's rule: whitespace tokens seen at least `min_count` times.

    Sorted by count, most frequent first; ties keep first-seen order.
    """
    counter = collections.Counter(w for name in names for w in name.split())
    kept = [(w, c) for w, c in counter.most_common() if c >= min_count]
    return cls([w for w, _ in kept], [c for _, c in kept])

  def save(self, path: str | os.PathLike) -> None:
    """Writes the word dict format that `from_word_dict` reads."""
    pathlib.Path(path).write_text("".join(f"{w} {c}\n" for w, c in zip(self.words, self.counts)))

  @property
  def unk_id(self) -> int:
    return len(self.words) + 1

  @property
  def size(self) -> int:
    """Rows of the embedding table: padding, the words, UNK."""
    return len(self.words) + 2

  def ids(self, name: str) -> list[int]:
    """The word ids of a name (whitespace split; unknown words -> unk_id)."""
    return [self._ids.get(w, self.unk_id) for w in name.split()]
