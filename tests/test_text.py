"""The vocabulary: the shipped word dict's ids, the build rule, the file format."""

import pytest

from bilstm_jax import text
from tests.helpers import SHARED_POLYVORE

WORD_DICT = SHARED_POLYVORE / "final_word_dict.txt"
needs_shared = pytest.mark.skipif(not WORD_DICT.exists(),
                                  reason=f"{WORD_DICT} absent (../shared is not beside the repo)")


@needs_shared
def test_shipped_word_dict_gives_the_original_ids():
  vocab = text.Vocabulary.from_word_dict(WORD_DICT)
  lines = [l.split() for l in WORD_DICT.read_text().splitlines() if l.strip()]
  assert len(vocab.words) == len(lines) == 2756
  assert vocab.ids("black leather bag") == [1, 2, 3]  # line index + 1
  assert vocab.ids(lines[-1][0]) == [2756]
  assert vocab.unk_id == 2757 and vocab.size == 2758  # UNK has a real row
  assert vocab.ids("black qwertyuiop bag") == [1, 2757, 3]


@needs_shared
def test_build_rule_reproduces_the_shipped_dict(tmp_path):
  lines = [l.split() for l in WORD_DICT.read_text().splitlines() if l.strip()]
  # A corpus with the shipped counts, plus rare words under the threshold.
  names = [w for w, c in lines for _ in range(int(c))] + ["qxrare"] * 29 + ["qxrarer qxwords"]
  vocab = text.Vocabulary.build(names, min_count=30)
  assert vocab.words == [w for w, _ in lines]
  assert vocab.counts == [int(c) for _, c in lines]
  vocab.save(tmp_path / "dict.txt")
  again = text.Vocabulary.from_word_dict(tmp_path / "dict.txt")
  assert again.words == vocab.words and again.counts == vocab.counts


def test_build_counts_whitespace_tokens_and_breaks_ties_by_first_seen():
  vocab = text.Vocabulary.build(["navy  striped shirt", "red shirt", "striped navy\tdress"], 2)
  assert vocab.words == ["navy", "striped", "shirt"]
  assert vocab.counts == [2, 2, 2]
  assert vocab.ids("red striped shirt") == [vocab.unk_id, 2, 3]
  assert vocab.ids("") == []
  assert text.PAD_ID == 0 not in vocab.ids("navy shirt")


def test_malformed_word_dict_names_file_and_line(tmp_path):
  path = tmp_path / "dict.txt"
  path.write_text("black 10\nleather\n")
  with pytest.raises(ValueError, match=r"dict.txt:2"):
    text.Vocabulary.from_word_dict(path)
  path.write_text("black 10\nblack 3\n")
  with pytest.raises(ValueError, match="'black' appears twice"):
    text.Vocabulary.from_word_dict(path)
