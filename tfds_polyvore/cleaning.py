"""Reads the Maryland label files and images, applying the bad-input rules.

Rules (each application is counted in a `Report`, never silent):
  * a missing label file, or one that is not valid JSON / not a list, raises
    `LabelFileError` naming the file: nothing sensible can be built without it;
  * an outfit record that is not an object with `set_id` and a list `items`,
    or that repeats a set id, is dropped;
  * an item record without an integer `index`, a string `name` and an integer
    `categoryid` is dropped;
  * (images) an item whose image is missing is dropped; so is one whose image
    cannot be decoded (corrupt or truncated file);
  * (images) a grayscale, CMYK, palette or alpha image, or one that is not a
    JPEG, is converted to an RGB JPEG (alpha composited over white, as on the
    Polyvore site) and kept;
  * (labels only) when an images folder exists, an item without an image file
    is dropped, so both builds agree on which items exist;
  * an outfit left with fewer than 2 items is dropped; one with more than
    MAX_ITEMS is cut to its first MAX_ITEMS items;
  * a FITB record without a question list, 4 answers and a blank position in
    range, or a compatibility line not `<0|1> <id> <id> ...`, is dropped; so is
    one naming an item that is not in the cleaned test split.
"""

from collections.abc import Callable, Sequence
import collections
import concurrent.futures
import dataclasses
import io
import json
import os
import pathlib

from PIL import Image

from tfds_polyvore import layout


class LabelFileError(ValueError):
  """A required label file is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Item:
  id: str
  name: str
  category: int
  image: pathlib.Path | None  # None in the labels-only build
  needs_conversion: bool = False


@dataclasses.dataclass(frozen=True)
class Outfit:
  set_id: str
  items: list[Item]


class Report:
  """Counts of every rule applied, by file and reason."""

  def __init__(self):
    self.counts = collections.defaultdict(collections.Counter)

  def add(self, where: str, reason: str, n: int = 1) -> None:
    if n:
      self.counts[where][reason] += n

  def as_dict(self) -> dict[str, dict[str, int]]:
    return {w: dict(sorted(c.items())) for w, c in sorted(self.counts.items())}

  def summary(self) -> str:
    lines = [f"  {w}: " + ", ".join(f"{r} {n}" for r, n in c.items())
             for w, c in self.as_dict().items()]
    return "Polyvore build summary:\n" + ("\n".join(lines) or "  nothing dropped or converted")


def read_json_list(path: pathlib.Path) -> list:
  """A label file's JSON list; LabelFileError naming the file otherwise."""
  try:
    data = json.loads(path.read_text())
  except FileNotFoundError:
    raise LabelFileError(f"Label file {path} is missing.\n{layout.LAYOUT_HELP}") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise LabelFileError(f"Label file {path} is not valid JSON ({e}); "
                         "download it again.") from None
  if not isinstance(data, list):
    raise LabelFileError(f"Label file {path} must hold a JSON list, "
                         f"found {type(data).__name__}.")
  return data


def load_outfits(root: pathlib.Path, split: str, images: bool,
                 report: Report) -> list[Outfit]:
  """The cleaned outfits of `split` (see the module docstring for the rules)."""
  where = layout.OUTFIT_FILES[split]
  images_dir = root / layout.IMAGES_DIR
  outfits, seen = [], set()
  for record in read_json_list(root / where):
    outfit = _parse_outfit(record, root if images or images_dir.is_dir() else None,
                           where, report)
    if outfit is None:
      continue
    if outfit.set_id in seen:
      report.add(where, "outfits dropped: duplicate set_id")
      continue
    seen.add(outfit.set_id)
    outfits.append(outfit)
  if images:
    outfits = _check_images(outfits, where, report)
  return [o for o in (_finish(o, where, report) for o in outfits) if o]


def _parse_outfit(record, root, where, report) -> Outfit | None:
  if not (isinstance(record, dict) and isinstance(record.get("items"), list)
          and isinstance(record.get("set_id"), (str, int))):
    report.add(where, "outfits dropped: malformed record")
    return None
  set_id = str(record["set_id"])
  items = []
  for it in record["items"]:
    if not (isinstance(it, dict) and _is_int(it.get("index"))
            and isinstance(it.get("name"), str) and _is_int(it.get("categoryid"))):
      report.add(where, "items dropped: malformed record")
      continue
    path = None if root is None else layout.image_path(root, set_id, it["index"])
    if path is not None and not path.is_file():
      report.add(where, "items dropped: missing image")
      continue
    items.append(Item(layout.item_id(set_id, it["index"]), it["name"], it["categoryid"], path))
  return Outfit(set_id, items)


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _check_images(outfits, where, report) -> list[Outfit]:
  """Decodes every image once (threads: PIL releases the GIL) to apply the rules."""
  items = [it for o in outfits for it in o.items]
  with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
    verdicts = dict(zip((it.id for it in items), pool.map(_inspect, (it.image for it in items))))
  checked = []
  for o in outfits:
    kept = []
    for it in o.items:
      verdict = verdicts[it.id]
      if verdict == "corrupt":
        report.add(where, "items dropped: unreadable image")
        continue
      if verdict != "ok":
        report.add(where, f"images converted to RGB JPEG: {verdict}")
      kept.append(dataclasses.replace(it, needs_conversion=verdict != "ok"))
    checked.append(Outfit(o.set_id, kept))
  return checked


def _inspect(path: pathlib.Path) -> str:
  """'ok' (an RGB JPEG), 'corrupt', or '<format> <mode>' (to convert)."""
  try:
    with Image.open(path) as im:
      im.draft("RGB", (64, 64))  # a reduced-scale decode still reads the whole stream
      im.load()
      return "ok" if (im.format, im.mode) == ("JPEG", "RGB") else f"{im.format} {im.mode}"
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
    return "corrupt"


def _finish(outfit: Outfit, where, report) -> Outfit | None:
  if len(outfit.items) < 2:
    report.add(where, "outfits dropped: fewer than 2 usable items")
    return None
  if len(outfit.items) > layout.MAX_ITEMS:
    report.add(where, f"outfits cut to {layout.MAX_ITEMS} items")
    report.add(where, "items dropped: beyond the cut", len(outfit.items) - layout.MAX_ITEMS)
    return Outfit(outfit.set_id, outfit.items[:layout.MAX_ITEMS])
  return outfit


def jpeg_bytes(item: Item) -> bytes:
  """The item's image as RGB JPEG bytes (the file itself unless it needs conversion)."""
  data = item.image.read_bytes()
  if not item.needs_conversion:
    return data
  with Image.open(io.BytesIO(data)) as im:
    rgba = im.convert("RGBA")
  rgb = Image.new("RGB", rgba.size, (255, 255, 255))
  rgb.paste(rgba, mask=rgba.getchannel("A"))
  out = io.BytesIO()
  rgb.save(out, format="JPEG", quality=95)
  return out.getvalue()


def load_fitb(path: pathlib.Path, known: Callable[[str], bool], report: Report,
              where: str) -> list[dict]:
  """The valid FITB questions of a file whose items all pass `known`."""
  questions = []
  for q in read_json_list(path):
    if not (isinstance(q, dict) and _str_list(q.get("question"))
            and _str_list(q.get("answers")) and len(q["answers"]) == 4
            and _is_int(q.get("blank_position"))
            and 1 <= q["blank_position"] <= len(q["question"]) + 1):
      report.add(where, "questions dropped: malformed record")
    elif not all(map(known, q["question"] + q["answers"])):
      report.add(where, "questions dropped: unknown item")
    else:
      questions.append({k: q[k] for k in ("question", "answers", "blank_position")})
  return questions


def _str_list(x) -> bool:
  return isinstance(x, list) and bool(x) and all(isinstance(i, str) for i in x)


def load_compat(path: pathlib.Path, known: Callable[[str], bool], report: Report,
                where: str) -> list[tuple[int, list[str]]]:
  """The valid lines of a compatibility file whose items all pass `known`."""
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise LabelFileError(f"Label file {path} is missing.\n{layout.LAYOUT_HELP}") from None
  except UnicodeDecodeError as e:
    raise LabelFileError(f"Label file {path} is not text ({e}); download it again.") from None
  lines = []
  for line in filter(str.strip, text.splitlines()):
    try:
      label, items = layout.parse_compat_line(line)
    except ValueError:
      report.add(where, "lines dropped: malformed")
      continue
    if all(map(known, items)):
      lines.append((label, items))
    else:
      report.add(where, "lines dropped: unknown item")
  return lines


def as_protocol_outfits(outfits: Sequence[Outfit]) -> list[list[tuple[str, int]]]:
  """The (item id, category) lists that `protocols` works on."""
  return [[(it.id, it.category) for it in o.items] for o in outfits]
