"""The Maryland Polyvore layout on disk: file names, item ids, line formats.

The one place that knows these facts; the builder, the synthetic generator and
the input pipeline all go through it.
"""

from collections.abc import Iterable
import pathlib

MAX_ITEMS = 8  # the original cut every outfit to this many items
SPLITS = ("train", "valid", "test")
OUTFIT_FILES = {split: f"label/{split}_no_dup.json" for split in SPLITS}
FITB_FILE = "label/fill_in_blank_test.json"
COMPAT_FILE = "label/fashion_compatibility_prediction.txt"
# Category-matched (Vasileva et al.) versions, same formats; derived from the
# test split with a seeded resampler when absent.
FITB_RESAMPLED_FILE = "label/fill_in_blank_test_resampled.json"
COMPAT_RESAMPLED_FILE = "label/fashion_compatibility_prediction_resampled.txt"
LABEL_FILES = (*OUTFIT_FILES.values(), FITB_FILE, COMPAT_FILE)
IMAGES_DIR = "images"

LAYOUT_HELP = """\
Expected layout (the Maryland Polyvore manual download, github.com/xthan/polyvore-dataset):
  <root>/label/train_no_dup.json
  <root>/label/valid_no_dup.json
  <root>/label/test_no_dup.json
  <root>/label/fill_in_blank_test.json
  <root>/label/fashion_compatibility_prediction.txt
  <root>/images/<set_id>/<index>.jpg   (one JPEG per item; 0.jpg is the outfit collage)
Optional: label/fill_in_blank_test_resampled.json and
label/fashion_compatibility_prediction_resampled.txt (category-matched protocol)."""


def item_id(set_id: str | int, index: int) -> str:
  """The global id of an item: `<set_id>_<index>`."""
  return f"{set_id}_{index}"


def image_path(root: str | pathlib.Path, set_id: str, index: int) -> pathlib.Path:
  """Where the JPEG of item `index` of outfit `set_id` lives (0 = collage)."""
  return pathlib.Path(root) / IMAGES_DIR / str(set_id) / f"{index}.jpg"


def missing_files(root: str | pathlib.Path, images: bool) -> list[str]:
  """The required files (and the images folder) absent under `root`."""
  root = pathlib.Path(root)
  missing = [f for f in LABEL_FILES if not (root / f).is_file()]
  if images and not (root / IMAGES_DIR).is_dir():
    missing.append(IMAGES_DIR + "/")
  return missing


def format_compat_line(label: int, items: Iterable[str]) -> str:
  """One line of the compatibility file: `<0|1> <item id> <item id> ...`."""
  return " ".join([str(label), *items])


def parse_compat_line(line: str) -> tuple[int, list[str]]:
  """Inverse of `format_compat_line`; raises ValueError on a malformed line."""
  fields = line.split()
  if len(fields) < 3 or fields[0] not in ("0", "1"):
    raise ValueError(f"expected '<0|1> <item id> <item id> ...', got {line.strip()!r}")
  return int(fields[0]), fields[1:]
