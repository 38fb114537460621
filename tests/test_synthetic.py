"""The synthetic Polyvore: real layout, determinism, style signal, protocol properties."""

import collections
import json

import numpy as np
from PIL import Image
import pytest

from tfds_polyvore import layout
from tfds_polyvore import synthetic
from tests.helpers import SHARED_POLYVORE

SIZES = (16, 4, 8)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return synthetic.generate(tmp_path_factory.mktemp("synth") / "polyvore", SIZES, 32, seed=3,
                            resample_seed=5)


def _files(root):
  return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root, split="test"):
  return json.loads((root / layout.OUTFIT_FILES[split]).read_text())


def _categories(root):
  return {layout.item_id(r["set_id"], it["index"]): it["categoryid"]
          for split in layout.SPLITS for r in _load(root, split) for it in r["items"]}


def test_deterministic_for_a_seed(data_root, tmp_path):
  again = synthetic.generate(tmp_path / "again", SIZES, 32, seed=3, resample_seed=5)
  assert _files(again) == _files(data_root)
  other = synthetic.generate(tmp_path / "other", SIZES, 32, seed=4, resample_seed=5)
  assert _files(other) != _files(data_root)
  with pytest.raises(FileExistsError):
    synthetic.generate(again, SIZES, 32)


def test_real_layout_and_records(data_root):
  assert not layout.missing_files(data_root, images=True)
  slot_of = {c: s for s, cats in synthetic.SLOTS.items() for c, _, _ in cats}
  for split, n in zip(layout.SPLITS, SIZES):
    records = _load(data_root, split)
    assert len(records) == n
    for r in records:
      assert set(r) == {"name", "views", "items", "image", "likes", "date", "set_url", "set_id",
                        "desc"}
      assert 3 <= len(r["items"]) <= 8
      order = [synthetic.ORDER.index(slot_of[it["categoryid"]]) for it in r["items"]]
      assert order == sorted(order)  # canonical category order
      with Image.open(layout.image_path(data_root, r["set_id"], 0)) as collage:
        assert collage.size == (64, 64)
      for it in r["items"]:
        assert set(it) == {"index", "name", "price", "likes", "image", "categoryid"}
        assert it["name"] == it["name"].lower()
        with Image.open(layout.image_path(data_root, r["set_id"], it["index"])) as im:
          assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (32, 32))


def test_categories_are_real_polyvore_ids():
  path = SHARED_POLYVORE / "category_id.txt"
  if not path.exists():
    pytest.skip(f"{path} absent (../shared is not beside the repo)")
  names = dict(line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
  for cats in synthetic.SLOTS.values():
    for category, noun, _ in cats:
      assert str(category) in names, (category, noun)


def test_items_of_an_outfit_share_a_style(tmp_path):
  root = synthetic.generate(tmp_path / "p", (60, 1, 4), 32, seed=0)
  records = _load(root, "train")
  colour = lambda name: {w for w in name.split() if w in synthetic.COLOURS}
  def mean_rgb(r, it):
    with Image.open(layout.image_path(root, r["set_id"], it["index"])) as im:
      a = np.asarray(im, np.float32).reshape(-1, 3)
    return a[a.min(axis=1) < 240].mean(axis=0)  # the garment, not the white background
  within, across, d_within, d_across = [], [], [], []
  for k, r in enumerate(records):
    other = records[(k + 1) % len(records)]
    a, b, c = r["items"][0], r["items"][1], other["items"][1]
    within.append(bool(colour(a["name"]) & colour(b["name"])))
    across.append(bool(colour(a["name"]) & colour(c["name"])))
    d_within.append(np.linalg.norm(mean_rgb(r, a) - mean_rgb(r, b)))
    d_across.append(np.linalg.norm(mean_rgb(r, a) - mean_rgb(other, c)))
  assert np.mean(within) > 0.4 > 0.2 > np.mean(across)
  assert np.median(d_within) < 0.5 * np.median(d_across)


def test_fitb_protocols(data_root):
  category = _categories(data_root)
  outfit_of = {layout.item_id(r["set_id"], it["index"]): r["set_id"]
               for r in _load(data_root) for it in r["items"]}
  by_set = {r["set_id"]: [layout.item_id(r["set_id"], it["index"]) for it in r["items"]]
            for r in _load(data_root)}
  original = json.loads((data_root / layout.FITB_FILE).read_text())
  resampled = json.loads((data_root / layout.FITB_RESAMPLED_FILE).read_text())
  assert len(original) == SIZES[2]
  resampled = {h["answers"][0]: h for h in resampled}
  assert len(resampled) >= SIZES[2] // 4  # tiny data: rare categories lack 3 other items
  for q in original:
    answer = q["answers"][0]
    full = by_set[outfit_of[answer]]
    assert full[q["blank_position"] - 1] == answer
    assert q["question"] == [i for i in full if i != answer]
    h = resampled.get(answer, q)
    for candidates in (q["answers"], h["answers"]):
      assert len(set(candidates)) == 4
      assert all(outfit_of[c] != outfit_of[answer] for c in candidates[1:])
    assert (h["question"], h["blank_position"], h["answers"][0]) == (
        q["question"], q["blank_position"], answer)
    if h is not q:
      assert {category[c] for c in h["answers"]} == {category[answer]}  # only style differs
  assert any(len({category[c] for c in q["answers"]}) > 1 for q in original)


def test_compatibility_protocols(data_root):
  category = _categories(data_root)
  test = [[layout.item_id(r["set_id"], it["index"]) for it in r["items"]]
          for r in _load(data_root)]
  outfit_of = {i: k for k, items in enumerate(test) for i in items}
  category_lists = [[category[i] for i in items] for items in test]
  for path, matched in ((layout.COMPAT_FILE, False), (layout.COMPAT_RESAMPLED_FILE, True)):
    lines = [layout.parse_compat_line(l) for l in (data_root / path).read_text().splitlines()]
    positives = [items for label, items in lines if label == 1]
    negatives = [items for label, items in lines if label == 0]
    assert positives == test and len(negatives) == len(test)
    for items in negatives:
      assert len({outfit_of[i] for i in items}) == len(items)  # each from another outfit
      if matched:
        assert [category[i] for i in items] in category_lists
    if not matched:
      assert any([category[i] for i in items] not in category_lists for items in negatives)


def test_generator_counts_in_default_protocol_sizes():
  counts = collections.Counter(len(synthetic._slots(np.random.default_rng(s))) for s in range(300))
  assert set(counts) == set(range(3, 9))
