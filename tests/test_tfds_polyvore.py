"""The TFDS builder: the real format on the sample images, every bad-input rule, no TF."""

import io
import json
import shutil
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from tfds_polyvore import cleaning
from tfds_polyvore import layout
from tfds_polyvore import polyvore
from tfds_polyvore import synthetic
from tests.helpers import SHARED_POLYVORE

SAMPLE = SHARED_POLYVORE / "images_sample"


def build(root, data_dir, images=True, resample_seed=0):
  builder = polyvore.Polyvore(config=polyvore.builder_config(images, resample_seed),
                              data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  return builder


def read(builder, split):
  decoders = {"images": polyvore.JpegBytes()} if builder.builder_config.images else None
  source = builder.as_data_source(split=split, decoders=decoders)
  return [source[i] for i in range(len(source))]


def outfit(set_id, indices, category=11):
  return {"name": f"outfit {set_id}", "views": 1, "likes": 2, "date": "", "desc": "",
          "image": "", "set_url": "", "set_id": str(set_id),
          "items": [{"index": i, "name": f"item {i} of {set_id}", "price": 1.0, "likes": 0,
                     "image": "", "categoryid": category} for i in indices]}


def write_labels(root, splits, fitb, compat):
  (root / "label").mkdir(parents=True, exist_ok=True)
  for split, records in splits.items():
    (root / layout.OUTFIT_FILES[split]).write_text(json.dumps(records))
  (root / layout.FITB_FILE).write_text(json.dumps(fitb))
  (root / layout.COMPAT_FILE).write_text("\n".join(compat) + "\n")


def save(root, set_id, index, mode="RGB", fmt="JPEG", colour=(200, 30, 30)):
  path = layout.image_path(root, set_id, index)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (12, 9), colour).convert(mode).save(path, format=fmt)
  return path


def test_item_id_format():
  assert layout.item_id("214181831", 3) == layout.item_id(214181831, 3) == "214181831_3"


# ----- the real format on the real sample images -----------------------------------------------

@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
  if not SAMPLE.is_dir():
    pytest.skip(f"{SAMPLE} absent (../shared is not beside the repo)")
  root = tmp_path_factory.mktemp("maryland")
  shutil.copytree(SAMPLE, root / layout.IMAGES_DIR)
  a, b, c = (outfit(s, range(1, len(list((SAMPLE / s).glob("*.jpg")))), category=k)
             for s, k in (("209512492", 11), ("7850135", 41), ("9883650", 35)))
  write_labels(root, {"train": [b, c], "valid": [a], "test": [a, c]},
               fitb=[{"question": ["209512492_1", "209512492_3"], "blank_position": 2,
                      "answers": ["209512492_2", "9883650_1", "9883650_2", "9883650_3"]}],
               compat=["1 209512492_1 209512492_2 209512492_3", "1 9883650_1 9883650_2",
                       "0 209512492_1 9883650_2"])
  return root


def test_real_format_build_on_sample_images(sample_root, tmp_path):
  builder = build(sample_root, tmp_path)
  splits = {s: i.num_examples for s, i in builder.info.splits.items()}
  assert splits == {"train": 2, "valid": 1, "test": 2, "fitb_original": 1,
                    "compat_original": 3, "compat_resampled": 2}
  report = builder.info.metadata["report"]
  # Each test outfit has its own category here, so nothing can be category-matched.
  assert report["fitb_resampled"] == {
      "questions dropped: under 3 items of the blank's category": 1,
      "split not written: no examples left": 1}
  assert report["compat_resampled"] == {
      "negatives fewer than the original's: too few outfits to match categories": 1}
  train = report[layout.OUTFIT_FILES["train"]]
  assert train["outfits cut to 8 items"] == 2  # 16 and 20 items
  assert train["items dropped: beyond the cut"] == (16 - 8) + (20 - 8)
  assert train["images converted to RGB JPEG: JPEG L"] == 3  # the three grayscale images
  records = {r["set_id"].decode(): r for r in read(builder, "train")}
  r = records["9883650"]
  assert [i.decode() for i in r["item_ids"]] == [f"9883650_{k}" for k in range(1, 9)]
  assert r["names"][0].decode() == "item 1 of 9883650" and list(r["categories"]) == [35] * 8
  assert r["length"] == 8 and len(r["images"]) == 8
  for k, jpeg in enumerate(r["images"], start=1):
    with Image.open(io.BytesIO(jpeg)) as im:
      with Image.open(SAMPLE / "9883650" / f"{k}.jpg") as original:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", original.size)
        if original.mode == "L":  # converted: gray in all three channels
          rgb = np.asarray(im, np.int16)
          assert np.abs(rgb[..., 0] - rgb[..., 2]).max() <= 2
        else:  # passed through byte for byte
          assert jpeg == (SAMPLE / "9883650" / f"{k}.jpg").read_bytes()
  fitb = read(builder, "fitb_original")[0]
  assert [a.decode() for a in fitb["answers"]][0] == "209512492_2"
  assert fitb["blank_position"] == 2
  assert "tensorflow" not in sys.modules


def test_labels_only_builds_without_images(sample_root, tmp_path):
  root = tmp_path / "labels"
  shutil.copytree(sample_root / "label", root / "label")
  builder = build(root, tmp_path / "tfds", images=False)
  records = read(builder, "train")
  assert "images" not in records[0]
  assert sorted(int(r["length"]) for r in records) == [8, 8]
  assert builder.info.splits["fitb_original"].num_examples == 1


# ----- bad input: each rule, counted -----------------------------------------------------------

@pytest.fixture(scope="module")
def bad_build(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad")
  for k in (1, 2, 3, 4):
    save(root, 100, k)
  truncated = save(root, 100, 6)
  truncated.write_bytes(truncated.read_bytes()[:40])  # a corrupt JPEG
  save(root, 100, 7, mode="L")
  save(root, 100, 8, mode="CMYK")
  save(root, 100, 9, mode="RGBA", fmt="PNG")  # an alpha PNG named .jpg
  save(root, 200, 1)  # outfit 200: its item 2 has no image -> under 2 items
  for k in range(1, 11):
    save(root, 300, k)
  for s in (400, 500, 600, 700, 800, 900):
    for k in (1, 2, 3):
      save(root, s, k, colour=(s % 256, 90, 40))
  bad_item = {"index": 10, "name": "no category"}
  o100 = outfit(100, range(1, 10))
  o100["items"].append(bad_item)
  train = [o100, outfit(200, (1, 2)), "not a record", {"set_id": "5"}, outfit(300, range(1, 11)),
           outfit(300, (1, 2))]
  test = [outfit(s, (1, 2, 3), category=c)
          for s, c in ((500, 11), (600, 11), (700, 11), (800, 11), (900, 41))]
  good = {"question": ["500_1", "500_3"], "blank_position": 2,
          "answers": ["500_2", "600_2", "700_2", "800_2"]}
  fitb = [good, {**good, "answers": ["500_2", "600_2", "700_2", "999_1"]},  # unknown item
          {**good, "answers": ["500_2", "600_2", "700_2", "100_1"]},  # a train item: not test
          {**good, "answers": ["500_2"]}, {**good, "blank_position": 9}, "junk"]  # malformed
  compat = ["1 500_1 500_2 500_3", "0 500_1 600_2 900_3", "0 500_1 999_2",
            "2 500_1 600_1", "1 500_1", "", "1 500_1 600_1 x_y"]
  write_labels(root, {"train": train, "valid": [outfit(400, (1, 2, 3))], "test": test},
               fitb, compat)
  return build(root, root / "tfds")


def test_every_bad_input_rule_is_counted(bad_build):
  report = bad_build.info.metadata["report"]
  assert report[layout.OUTFIT_FILES["train"]] == {
      "items dropped: malformed record": 1,
      "items dropped: missing image": 2,  # 100_5, 200_2
      "items dropped: unreadable image": 1,  # 100_6
      "images converted to RGB JPEG: JPEG L": 1,
      "images converted to RGB JPEG: JPEG CMYK": 1,
      "images converted to RGB JPEG: PNG RGBA": 1,
      "outfits dropped: fewer than 2 usable items": 1,  # 200
      "outfits dropped: malformed record": 2,
      "outfits dropped: duplicate set_id": 1,
      "outfits cut to 8 items": 1, "items dropped: beyond the cut": 2,
  }
  assert report[layout.FITB_FILE] == {"questions dropped: malformed record": 3,
                                      "questions dropped: unknown item": 2}
  assert report[layout.COMPAT_FILE] == {"lines dropped: malformed": 2,
                                        "lines dropped: unknown item": 2}
  # 800_2's category (11) has items in 3 other outfits; nothing else was resampled away.
  assert "fitb_resampled" not in report
  assert layout.OUTFIT_FILES["test"] not in report


def test_bad_input_leaves_the_good_data(bad_build):
  train = {r["set_id"].decode(): r for r in read(bad_build, "train")}
  assert sorted(train) == ["100", "300"]
  kept = [i.decode() for i in train["100"]["item_ids"]]
  assert kept == ["100_1", "100_2", "100_3", "100_4", "100_7", "100_8", "100_9"]
  for jpeg in train["100"]["images"]:
    with Image.open(io.BytesIO(jpeg)) as im:
      assert (im.format, im.mode) == ("JPEG", "RGB")
  alpha = np.asarray(Image.open(io.BytesIO(train["100"]["images"][-1])), np.int16)
  assert np.abs(alpha - [200, 30, 30]).max() < 40  # opaque pixels keep their colour
  assert train["300"]["length"] == 8
  fitb = read(bad_build, "fitb_original")
  assert len(fitb) == 1 and fitb[0]["answers"][0] == b"500_2"
  resampled = read(bad_build, "fitb_resampled")
  assert [a.decode() for a in resampled[0]["answers"]][0] == "500_2"
  assert {a.decode().split("_")[0] for a in resampled[0]["answers"][1:]} <= {"600", "700", "800"}
  compat = read(bad_build, "compat_original")
  assert [(int(c["label"]), len(c["items"])) for c in compat] == [(1, 3), (0, 3)]


def test_missing_label_file_is_a_clear_error(tmp_path):
  write_labels(tmp_path, {"train": [], "valid": []}, [], [])
  (tmp_path / layout.IMAGES_DIR).mkdir()
  with pytest.raises(cleaning.LabelFileError, match="test_no_dup.json is missing"):
    build(tmp_path, tmp_path / "tfds")


@pytest.mark.parametrize("content,message", [("{not json", "is not valid JSON"),
                                             ('{"set_id": 1}', "must hold a JSON list")])
def test_malformed_label_file_is_a_clear_error(tmp_path, content, message):
  write_labels(tmp_path, {"train": [], "valid": [], "test": []}, [], [])
  (tmp_path / layout.OUTFIT_FILES["valid"]).write_text(content)
  with pytest.raises(cleaning.LabelFileError, match=f"valid_no_dup.json {message}"):
    build(tmp_path, tmp_path / "tfds", images=False)


def test_resampled_protocol_derived_when_files_absent(tmp_path):
  root = synthetic.generate(tmp_path / "synth", (8, 2, 16), 16, seed=1)
  (root / layout.FITB_RESAMPLED_FILE).unlink()
  (root / layout.COMPAT_RESAMPLED_FILE).unlink()
  builder = build(root, tmp_path / "tfds", images=False, resample_seed=7)
  assert builder.builder_config.name == "labels_only_resample7"
  category = {i.decode(): c for r in read(builder, "test")
              for i, c in zip(r["item_ids"], r["categories"])}
  fitb = read(builder, "fitb_resampled")
  dropped = builder.info.metadata["report"].get("fitb_resampled", {})
  assert len(fitb) + sum(dropped.values()) == 16
  for q in fitb:
    assert len({category[a.decode()] for a in q["answers"]}) == 1
  lists = [[category[i.decode()] for i in r["item_ids"]] for r in read(builder, "test")]
  negatives = [q for q in read(builder, "compat_resampled") if q["label"] == 0]
  assert negatives
  for q in negatives:
    assert [category[i.decode()] for i in q["items"]] in lists
