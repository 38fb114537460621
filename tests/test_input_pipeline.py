"""Batches: shapes, masks, padding, determinism, process shards, exact resume, cached features."""

import json
import sys
import time

import numpy as np
import pytest

from bilstm_jax import input_pipeline
from bilstm_jax import text
from tests.helpers import SHARED_POLYVORE
from tests.helpers import load_config
from tfds_polyvore import layout


def tiny_config(cache_dir, **data):
  c = load_config("tiny")
  c.unlock()
  c.data.cache_dir = str(cache_dir)
  c.data.synthetic_outfits = (16, 4, 8)
  c.data.synthetic_image_size = 32
  c.data.image_size = 24
  c.data.max_tokens = 6
  c.data.num_threads = 2
  c.train.batch_size = 4
  c.data.update(data)
  return c


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def config(cache):
  return tiny_config(cache)


@pytest.fixture(scope="module")
def ds(config):
  return input_pipeline.prepare(config.data)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_prepare_caches_by_parameters(ds, config, cache):
  assert ds.source == "synthetic" and ds.num_outfits("train") == 16
  assert (cache / "synthetic").is_dir() and len(list((cache / "synthetic").iterdir())) == 1
  vocab_file = ds.data_dir / f"vocab_min{config.data.min_word_count}.txt"
  assert text.Vocabulary.from_word_dict(vocab_file).words == ds.vocab.words
  t = time.perf_counter()
  again = input_pipeline.prepare(config.data)  # nothing rebuilt
  assert time.perf_counter() - t < 5 and again.data_dir == ds.data_dir
  assert "tensorflow" not in sys.modules


def test_missing_real_data_fails_fast_with_instructions(tmp_path):
  c = tiny_config(tmp_path / "cache", synthetic=False)
  with pytest.raises(input_pipeline.DataNotFoundError) as e:
    input_pipeline.prepare(c.data)
  message = str(e.value)
  assert "data.root is not set" in message and "label/train_no_dup.json" in message
  assert "images/<set_id>/<index>.jpg" in message and input_pipeline.DEMO_COMMAND in message
  (tmp_path / "root" / "label").mkdir(parents=True)
  (tmp_path / "root" / layout.FITB_FILE).write_text("[]")
  c.data.root = str(tmp_path / "root")
  with pytest.raises(input_pipeline.DataNotFoundError) as e:
    input_pipeline.prepare(c.data)
  assert "label/test_no_dup.json" in str(e.value) and "images/" in str(e.value)
  assert "fill_in_blank_test.json," not in str(e.value)
  assert not (tmp_path / "cache").exists()  # failed before any work


def test_batch_shapes_masks_and_padding(ds, config):
  batch = next(input_pipeline.eval_batches(ds, "train", config))
  b, t, s, l = 4, 8, 24, 6
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "images": ((b, t, s, s, 3), np.float32), "mask": ((b, t), bool),
      "lengths": ((b,), np.int32), "tokens": ((b, t, l), np.int32),
      "categories": ((b, t), np.int32)}
  records = ds.outfits("train").get(range(4))
  assert list(batch["lengths"]) == [r["length"] for r in records]
  np.testing.assert_array_equal(batch["mask"], np.arange(t) < batch["lengths"][:, None])
  pad = ~batch["mask"]
  assert pad.any() and not batch["images"][pad].any()
  assert not batch["tokens"][pad].any() and not batch["categories"][pad].any()
  assert (batch["categories"][batch["mask"]] > 0).all()
  assert batch["images"].min() >= -1 and batch["images"].max() <= 1
  for r, rec in enumerate(records):
    for k, name in enumerate(rec["names"]):
      ids = ds.vocab.ids(name)[:l]
      np.testing.assert_array_equal(batch["tokens"][r, k], ids + [0] * (l - len(ids)))
    # Item k's image is its JPEG, decoded and resized.
    np.testing.assert_array_equal(batch["images"][r, :rec["length"]],
                                  ds.decode_images(rec["images"]))


def test_pad_with_last_image(cache, ds):
  c = tiny_config(cache, pad_with_last_image=True)
  quirk = input_pipeline.prepare(c.data)
  batch = next(input_pipeline.eval_batches(quirk, "train", c))
  plain = next(input_pipeline.eval_batches(ds, "train", c))
  for r, n in enumerate(batch["lengths"]):
    pad = batch["images"][r, n:]
    np.testing.assert_array_equal(pad, np.broadcast_to(batch["images"][r, n - 1], pad.shape))
  np.testing.assert_array_equal(batch["mask"], plain["mask"])


def test_flip_is_a_mirror_and_only_in_training(ds, config):
  plain, mirrored = set(), set()
  for rec in ds.outfits("train"):
    images = ds.decode_images(rec["images"])
    np.testing.assert_array_equal(ds.decode_images(rec["images"], [True] * len(images)),
                                  images[:, :, ::-1])
    plain.update(im.tobytes() for im in images)
    mirrored.update(im[:, ::-1].tobytes() for im in images)
  kinds = []
  for batch in take(input_pipeline.train_batches(ds, config, process_index=0, process_count=1), 4):
    for image in batch["images"][batch["mask"]]:
      kinds.append((image.tobytes() in plain, image.tobytes() in mirrored))
  assert all(any(k) for k in kinds)
  assert (True, False) in kinds and (False, True) in kinds  # both, at random
  for batch in input_pipeline.eval_batches(ds, "train", config):
    assert all(image.tobytes() in plain for image in batch["images"][batch["mask"]])


def test_training_order_deterministic_and_epochs_cover_all(ds, config):
  def run(seed):
    c = config.copy_and_resolve_references()
    c.seed = seed
    return take(input_pipeline.train_batches(ds, c, process_index=0, process_count=1), 8)
  a, b, other = run(0), run(0), run(1)
  assert_same(a, b)
  assert any(not np.array_equal(x["categories"], y["categories"]) for x, y in zip(a, other))
  for epoch in (a[:4], a[4:]):  # 16 outfits, batch 4: each epoch shows each outfit once
    seen = [tuple(bt["categories"][r][:bt["lengths"][r]]) for bt in epoch for r in range(4)]
    assert sorted(seen) == sorted(tuple(r["categories"]) for r in ds.outfits("train"))


def test_exact_resume(ds, config):
  it = input_pipeline.train_batches(ds, config, process_index=0, process_count=1)
  take(it, 3)
  state = json.loads(json.dumps(it.state()))  # survives a checkpoint as JSON
  expected = take(it, 6)  # crosses into the next epoch
  resumed = input_pipeline.train_batches(ds, config, process_index=0, process_count=1,
                                         state=state)
  assert_same(take(resumed, 6), expected)
  c = config.copy_and_resolve_references()
  c.train.batch_size = 8
  with pytest.raises(ValueError, match="global_batch_size"):
    input_pipeline.train_batches(ds, c, process_index=0, process_count=1, state=state)


def test_process_shards_make_the_global_batch(ds, config):
  whole = take(input_pipeline.train_batches(ds, config, process_index=0, process_count=1), 3)
  parts = [take(input_pipeline.train_batches(ds, config, process_index=p, process_count=2), 3)
           for p in (0, 1)]
  for g, p0, p1 in zip(whole, *parts):
    assert p0["images"].shape[0] == 2
    for k in g:
      np.testing.assert_array_equal(g[k], np.concatenate([p0[k], p1[k]]), err_msg=k)
  with pytest.raises(ValueError, match="divisible"):
    input_pipeline.train_batches(ds, config, process_index=0, process_count=3)


def test_questions_are_plain_python(ds):
  fitb = ds.questions("fitb", "original")
  assert len(fitb) == 8 and isinstance(fitb[0]["answers"][0], str)
  assert isinstance(fitb[0]["blank_position"], int)
  compat = ds.questions("compat", "resampled")
  assert {q["label"] for q in compat} == {0, 1}
  with pytest.raises(ValueError):
    ds.questions("fitb", "harder")


def test_item_table(ds):
  table = ds.item_table("test")
  records = list(ds.outfits("test"))
  assert table.ids == [i for r in records for i in r["item_ids"]]
  assert list(table.categories) == [c for r in records for c in r["categories"]]
  assert table.positions[0] == 0 and table.positions[records[0]["length"] - 1] == 1
  np.testing.assert_array_equal(table.tokens[0][:2], ds.vocab.ids(records[0]["names"][0])[:2])
  chunks = list(table.batches(5))
  assert [len(c) for c in chunks[:-1]] == [5] * (len(chunks) - 1) and len(chunks[-1]) <= 5
  images = np.concatenate(chunks)
  np.testing.assert_array_equal(images[:records[0]["length"]],
                                ds.decode_images(records[0]["images"]))


def test_cached_features_mode(ds, config, cache, tmp_path):
  ids = [i for s in layout.SPLITS for i in ds.item_table(s).ids]
  feats = np.random.default_rng(0).normal(size=(len(ids), 5)).astype(np.float32)
  path = tmp_path / "features.npz"
  np.savez(path, ids=np.asarray(ids), features=feats)
  c = tiny_config(cache, encoder_features=str(path))
  cached = input_pipeline.prepare(c.data)
  assert cached.feature_dim == 5 and ds.feature_dim is None
  assert "labels_only" in str(cached.data_dir)
  batch = next(input_pipeline.eval_batches(cached, "train", c))
  assert "images" not in batch and batch["features"].shape == (4, 8, 5)
  row = {i: r for r, i in enumerate(ids)}
  for r, rec in enumerate(cached.outfits("train").get(range(4))):
    np.testing.assert_array_equal(batch["features"][r, :rec["length"]],
                                  feats[[row[i] for i in rec["item_ids"]]])
    assert not batch["features"][r, rec["length"]:].any()
  np.testing.assert_array_equal(np.concatenate(list(cached.item_table("test").batches(7))),
                                feats[[row[i] for i in cached.item_table("test").ids]])
  np.savez(path, ids=np.asarray(ids[1:]), features=feats[1:])
  with pytest.raises(KeyError, match=f"{ids[0]} has no cached features in {path}"):
    input_pipeline.prepare(c.data)


def test_vocab_file_is_used_when_set(cache):
  word_dict = SHARED_POLYVORE / "final_word_dict.txt"
  if not word_dict.exists():
    pytest.skip(f"{word_dict} absent (../shared is not beside the repo)")
  c = tiny_config(cache, vocab_file=str(word_dict))
  vocab = input_pipeline.prepare(c.data).vocab
  assert vocab.size == 2758 and vocab.ids("black leather") == [1, 2]
