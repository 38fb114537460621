"""The Maryland Polyvore dataset (Han et al. 2017) as a TFDS builder.

Reads the manual download (layout in `layout.LAYOUT_HELP`) from the manual
directory and writes array_record files that read back without TensorFlow.
The bad-input rules are in `cleaning`; their counts are logged at the end of
the build and kept in `builder.info.metadata["report"]`.

All splits share one feature dictionary; each split fills its own fields and
leaves the others empty:
  train, valid, test:            set_id, item_ids, images*, names, categories, length
  fitb_original, fitb_resampled: question, answers, blank_position
  compat_original, compat_resampled: label, items
(*images only in the "images" config: RGB JPEG bytes, which tfds decodes with
PIL, or which `JpegBytes` hands over undecoded.) Records keep the order of the
label files. A split left with no examples is not written; the report says why.
The resampled splits come from the optional resampled label files, or else
from `protocols` with the config's `resample_seed`, from the cleaned test split.
"""

import dataclasses
import pathlib

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from tfds_polyvore import cleaning
from tfds_polyvore import layout
from tfds_polyvore import protocols

QUESTION_SPLITS = ("fitb_original", "fitb_resampled", "compat_original", "compat_resampled")


@dataclasses.dataclass
class PolyvoreConfig(tfds.core.BuilderConfig):
  images: bool = True  # False: labels only (the cached-features mode reads this)
  resample_seed: int = 0  # seeds the resampled protocol when its files are absent


def builder_config(images: bool, resample_seed: int = 0) -> str | PolyvoreConfig:
  """The `config` argument of `Polyvore` for a build; the name keys its directory.

  Seed 0 gives the registered configs "images" and "labels_only"; another
  seed a custom config named e.g. "images_resample3".
  """
  name = "images" if images else "labels_only"
  if not resample_seed:
    return name
  return PolyvoreConfig(name=f"{name}_resample{resample_seed}", images=images,
                        resample_seed=resample_seed)


class JpegBytes(tfds.decode.SkipDecoding):
  """Keeps a sequence of images as JPEG bytes (decoded later, in threads)."""

  def decode_batch_example_np(self, serialized):
    return serialized


class Polyvore(tfds.core.GeneratorBasedBuilder):
  """Maryland Polyvore outfits, FITB questions and compatibility lists."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [PolyvoreConfig(name="images", images=True),
                     PolyvoreConfig(name="labels_only", images=False)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = layout.LAYOUT_HELP

  def _info(self) -> tfds.core.DatasetInfo:
    text_seq = tfds.features.Sequence(tfds.features.Text())
    features = {
        "set_id": tfds.features.Text(), "item_ids": text_seq, "names": text_seq,
        "categories": tfds.features.Sequence(np.int32), "length": np.int32,
        "question": text_seq, "answers": text_seq, "blank_position": np.int32,
        "label": np.int32, "items": text_seq,
    }
    if self.builder_config.images:
      features["images"] = tfds.features.Sequence(
          tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"))
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(), disable_shuffling=True,  # keep the files' order
        homepage="https://github.com/xthan/polyvore-dataset")

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    images = self.builder_config.images
    report = cleaning.Report()
    outfits = {s: cleaning.load_outfits(root, s, images, report) for s in layout.SPLITS}
    test_items = {it.id for o in outfits["test"] for it in o.items}
    questions = self._questions(root, outfits["test"], test_items.__contains__, report)
    gens = {s: self._generate_examples(r) for s, r in {**outfits, **questions}.items() if r}
    for split in set(layout.SPLITS + QUESTION_SPLITS) - set(gens):
      report.add(split, "split not written: no examples left")
    self.info.metadata["report"] = report.as_dict()
    # A warning when anything was dropped or converted, so the summary is seen.
    (logging.warning if report.counts else logging.info)(report.summary())
    return gens

  def _questions(self, root, test, known, report) -> dict[str, list[dict]]:
    q = {"fitb_original": cleaning.load_fitb(root / layout.FITB_FILE, known, report,
                                              layout.FITB_FILE)}
    compat = cleaning.load_compat(root / layout.COMPAT_FILE, known, report, layout.COMPAT_FILE)
    seed = self.builder_config.resample_seed
    if (root / layout.FITB_RESAMPLED_FILE).exists():
      q["fitb_resampled"] = cleaning.load_fitb(
          root / layout.FITB_RESAMPLED_FILE, known, report, layout.FITB_RESAMPLED_FILE)
    else:
      q["fitb_resampled"], dropped = protocols.resample_fitb(
          q["fitb_original"], cleaning.as_protocol_outfits(test), seed)
      report.add("fitb_resampled", "questions dropped: under 3 items of the blank's category",
                 dropped)
    if (root / layout.COMPAT_RESAMPLED_FILE).exists():
      compat_resampled = cleaning.load_compat(
          root / layout.COMPAT_RESAMPLED_FILE, known, report, layout.COMPAT_RESAMPLED_FILE)
    else:
      negatives = sum(1 for label, _ in compat if label == 0)
      compat_resampled = protocols.compat_lines(
          cleaning.as_protocol_outfits(test), seed, negatives, matched=True) if test else []
      made = sum(1 for label, _ in compat_resampled if label == 0)
      report.add("compat_resampled", "negatives fewer than the original's: too few outfits "
                 "to match categories", negatives - made)
    q["compat_original"] = [{"label": l, "items": i} for l, i in compat]
    q["compat_resampled"] = [{"label": l, "items": i} for l, i in compat_resampled]
    return q

  def _generate_examples(self, records):
    """Outfits (cleaning.Outfit) or questions (dicts) as examples of the shared features."""
    empty = {"set_id": "", "item_ids": [], "names": [], "categories": [], "length": 0,
             "question": [], "answers": [], "blank_position": 0, "label": 0, "items": []}
    if self.builder_config.images:
      empty["images"] = []
    for key, r in enumerate(records):
      if isinstance(r, dict):
        yield key, {**empty, **r}
        continue
      example = {**empty, "set_id": r.set_id, "item_ids": [it.id for it in r.items],
                 "names": [it.name for it in r.items],
                 "categories": [it.category for it in r.items], "length": len(r.items)}
      if self.builder_config.images:
        example["images"] = [cleaning.jpeg_bytes(it) for it in r.items]
      yield r.set_id, example
