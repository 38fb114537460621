"""A seeded synthetic Polyvore in exactly the Maryland layout and formats.

Each outfit has a latent style: a two-colour palette, a pattern and a material.
Its items (3-8, in the canonical order tops, outerwear, bottoms or dress,
shoes, bag, accessories; real Polyvore category ids) share that style in
their names ("navy striped cotton t-shirt" plus noise words) and in their
images (category silhouettes filled with the palette and pattern, with noise).
Some items vary the style (swapped colours, plain fill) or break it, so the
task is learnable but not trivial. The FITB and compatibility files come in
the original protocol (random candidates) and the resampled one (candidates
and negatives matched by category), where only the style separates right from
wrong.
"""

from collections.abc import Sequence
import functools
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image
from PIL import ImageDraw

from tfds_polyvore import layout
from tfds_polyvore import protocols

VERSION = 1  # bump when the output changes: it keys the cached copies

COLOURS = {
    "black": (30, 30, 32), "white": (232, 230, 222), "navy": (28, 40, 92),
    "red": (196, 32, 38), "beige": (214, 190, 150), "grey": (128, 128, 132),
    "pink": (236, 140, 170), "olive": (110, 120, 50), "blue": (60, 110, 200),
    "burgundy": (110, 20, 44), "mustard": (220, 170, 40), "brown": (110, 70, 40),
    "teal": (20, 130, 130), "lavender": (170, 150, 215),
}
PATTERNS = ("solid", "striped", "checked", "dotted")
MATERIALS = ("cotton", "leather", "denim", "silk", "wool", "knit", "suede")
NOISE_WORDS = ("women's", "new", "plus", "size", "mini", "long", "high", "yoins",
               "vintage", "slim", "set", "sale", "classic", "oversized")

# Slot -> (categoryid, noun, silhouette); slots in canonical outfit order.
SLOTS = {
    "top": [(11, "top", "top"), (21, "t-shirt", "top"), (17, "blouse", "top"),
            (19, "sweater", "top")],
    "outerwear": [(24, "coat", "coat"), (25, "jacket", "coat")],
    "bottom": [(27, "jeans", "pants"), (28, "pants", "pants"), (29, "shorts", "shorts"),
               (7, "skirt", "skirt")],
    "dress": [(3, "dress", "dress")],
    "shoes": [(42, "boots", "boot"), (43, "pumps", "shoe"), (46, "sandals", "shoe"),
              (49, "sneakers", "shoe")],
    "bag": [(36, "tote bag", "bag"), (37, "shoulder bag", "bag"), (38, "clutch", "clutch")],
    "accessory": [(62, "necklace", "necklace"), (64, "earrings", "earrings"),
                  (57, "sunglasses", "sunglasses"), (55, "hat", "hat"),
                  (52, "belt", "belt"), (106, "bracelet", "bracelet")],
}
ORDER = ("top", "outerwear", "bottom", "dress", "shoes", "bag", "accessory")
OFF_STYLE = 0.1  # share of items drawn in a random other palette


def generate(out_dir: str | os.PathLike, outfits: Sequence[int] = (1200, 150, 300),
             image_size: int = 64, seed: int = 0, resample_seed: int = 0) -> pathlib.Path:
  """Writes a synthetic Polyvore to `out_dir` (which must not exist yet).

  Args:
    out_dir: the dataset root to create (label/, images/).
    outfits: train, valid and test outfit counts (test at least 4).
    image_size: side of the item JPEGs in pixels (the collage is twice that).
    seed: seeds everything but the resampled protocol.
    resample_seed: seeds the resampled (category-matched) protocol files.

  Returns:
    `out_dir` as a Path. Written to a temporary sibling first and renamed, so
    an interrupted run leaves no half dataset behind.
  """
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists():
    raise FileExistsError(f"{out_dir} exists; generate writes a new directory.")
  if len(outfits) != 3 or outfits[2] < 4 or min(outfits) < 1:
    raise ValueError(f"outfits must be (train, valid, test) counts with test >= 4, got {outfits}")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
  try:
    _write(tmp, outfits, image_size, seed, resample_seed)
    tmp.rename(out_dir)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
    if not (out_dir / layout.COMPAT_RESAMPLED_FILE).exists():
      raise
    # Another process (same machine, same parameters) finished first: same data.
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def _write(root, outfits, image_size, seed, resample_seed):
  rng = np.random.default_rng(seed)
  set_ids = _unique_ids(rng, sum(outfits))
  (root / "label").mkdir()
  test = []
  start = 0
  for split, n in zip(layout.SPLITS, outfits):
    records = [_outfit(rng, set_id, image_size, root)
               for set_id in set_ids[start:start + n]]
    start += n
    (root / layout.OUTFIT_FILES[split]).write_text(json.dumps(records))
    if split == "test":
      test = [[(layout.item_id(r["set_id"], it["index"]), it["categoryid"]) for it in r["items"]]
              for r in records]
  fitb = protocols.fitb_questions(test, seed)
  fitb_resampled, _ = protocols.resample_fitb(fitb, test, resample_seed)
  (root / layout.FITB_FILE).write_text(json.dumps(fitb))
  (root / layout.FITB_RESAMPLED_FILE).write_text(json.dumps(fitb_resampled))
  for path, s, matched in ((layout.COMPAT_FILE, seed, False),
                           (layout.COMPAT_RESAMPLED_FILE, resample_seed, True)):
    lines = protocols.compat_lines(test, s, num_negatives=len(test), matched=matched)
    (root / path).write_text("\n".join(layout.format_compat_line(l, i) for l, i in lines) + "\n")


def _unique_ids(rng, n) -> list[str]:
  ids = set()
  while len(ids) < n:
    ids.update(int(i) for i in rng.integers(10**6, 10**9, size=n - len(ids)))
  return [str(i) for i in rng.permutation(sorted(ids))]


def _style(rng) -> dict:
  primary, secondary = rng.choice(list(COLOURS), size=2, replace=False)
  return {"colours": (str(primary), str(secondary)),
          "pattern": str(rng.choice(PATTERNS)), "material": str(rng.choice(MATERIALS))}


def _outfit(rng, set_id, size, root) -> dict:
  """One outfit record; writes its item images and the collage."""
  style = _style(rng)
  slots = _slots(rng)
  folder = root / layout.IMAGES_DIR / set_id
  folder.mkdir(parents=True)
  items, images, index = [], [], 0
  for slot in slots:
    category, noun, shape = SLOTS[slot][rng.integers(len(SLOTS[slot]))]
    item_style = _item_style(rng, style)
    index += 1 + int(rng.random() < 0.15)  # real indices skip numbers
    image = _render(rng, shape, item_style, size)
    image.save(folder / f"{index}.jpg", format="JPEG", quality=90)
    images.append(image)
    items.append({"index": index, "name": _name(rng, item_style, noun),
                  "price": round(float(rng.uniform(5, 300)), 2),
                  "likes": int(rng.integers(0, 2000)),
                  "image": f"http://img.polyvore.com/synthetic/{set_id}_{index}.jpg",
                  "categoryid": category})
  _collage(images, size).save(folder / "0.jpg", format="JPEG", quality=90)
  return {"name": f"{style['colours'][0]} {style['pattern']} look",
          "views": int(rng.integers(0, 5000)), "items": items,
          "image": f"http://img.polyvore.com/synthetic/{set_id}.jpg",
          "likes": int(rng.integers(0, 500)), "date": "1 year ago",
          "set_url": f"http://www.polyvore.com/cgi/set?id={set_id}", "set_id": set_id, "desc": ""}


def _slots(rng) -> list[str]:
  """3-8 slots in canonical order: a top and bottom or a dress, shoes, extras."""
  n = int(rng.integers(3, 9))
  base = ["top", "bottom", "shoes"] if rng.random() < 0.7 else ["dress", "shoes"]
  extras = ["outerwear", "bag"] + ["accessory"] * 4
  extras = [extras[i] for i in rng.permutation(len(extras))][:n - len(base)]
  slots = sorted(base + extras, key=ORDER.index)
  return slots


def _item_style(rng, style) -> dict:
  """The outfit's style as one item wears it: maybe swapped, plain, or off-style."""
  if rng.random() < OFF_STYLE:
    return _style(rng)
  colours = style["colours"][::-1] if rng.random() < 0.3 else style["colours"]
  pattern = style["pattern"] if rng.random() < 0.8 else "solid"
  return {**style, "colours": colours, "pattern": pattern}


def _name(rng, style, noun) -> str:
  patterned = style["pattern"] != "solid"
  words = [w for w, p in ((style["colours"][0], 0.85), (style["colours"][1], 0.5 * patterned),
                          (style["pattern"], 0.7 * patterned), (style["material"], 0.6))
           if rng.random() < p]
  noise = [w for w in NOISE_WORDS if rng.random() < 0.08]
  return " ".join(noise + words + [noun])


def _render(rng, shape, style, size) -> Image.Image:
  """A garment-like picture: the silhouette filled with the palette and pattern."""
  mask = Image.new("L", (size, size), 0)
  scale = rng.uniform(0.8, 1.0)
  shift = rng.uniform(-0.06, 0.06, size=2)
  def xy(points):
    return [(size * (0.5 + (x - 0.5) * scale + shift[0]),
             size * (0.5 + (y - 0.5) * scale + shift[1])) for x, y in points]
  draw = ImageDraw.Draw(mask)
  for kind, points in SHAPES[shape]:
    if kind == "poly":
      draw.polygon(xy(points), fill=255)
    else:
      draw.ellipse(xy(points), fill=255)
  colours = np.array([COLOURS[c] for c in style["colours"]], np.float32)
  colours += rng.uniform(-15, 15, size=3).astype(np.float32)
  fill = colours[_pattern(style["pattern"], size).astype(np.intp)]
  inside = np.asarray(mask, np.float32)[..., None] / 255
  noise = rng.standard_normal(fill.shape, dtype=np.float32) * (2 + 4 * inside)
  pixels = 250 + inside * (fill - 250) + noise  # white background, textured garment
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@functools.lru_cache(maxsize=None)
def _pattern(pattern, size) -> np.ndarray:
  """Where the secondary colour shows, a [size, size] bool map."""
  y, x = np.mgrid[:size, :size] * (16 / size)  # 16 pattern units across the image
  if pattern == "striped":
    return (y % 4) < 1.5
  if pattern == "checked":
    return ((x // 3) + (y // 3)) % 2 == 1
  if pattern == "dotted":
    return ((x % 4 - 2) ** 2 + (y % 4 - 2) ** 2) < 1.0
  return np.zeros((size, size), bool)


def _collage(images, size) -> Image.Image:
  """The outfit collage (0.jpg): item images on a white grid, twice the item size."""
  side = int(np.ceil(np.sqrt(len(images))))
  cell = 2 * size // side
  canvas = Image.new("RGB", (2 * size, 2 * size), (255, 255, 255))
  for k, image in enumerate(images):
    canvas.paste(image.resize((cell, cell)), ((k % side) * cell, (k // side) * cell))
  return canvas


# Silhouettes in unit coordinates: ("poly", points) or ("ellipse", (x0, y0), (x1, y1)).
SHAPES = {
    "top": [("poly", [(.3, .15), (.7, .15), (.92, .35), (.82, .45), (.72, .38), (.72, .85),
                      (.28, .85), (.28, .38), (.18, .45), (.08, .35)])],
    "coat": [("poly", [(.3, .08), (.7, .08), (.95, .3), (.9, .75), (.78, .75), (.76, .4),
                       (.76, .95), (.24, .95), (.24, .4), (.22, .75), (.1, .75), (.05, .3)])],
    "pants": [("poly", [(.28, .08), (.72, .08), (.78, .95), (.56, .95), (.5, .4), (.44, .95),
                        (.22, .95)])],
    "shorts": [("poly", [(.25, .25), (.75, .25), (.82, .7), (.55, .7), (.5, .5), (.45, .7),
                         (.18, .7)])],
    "skirt": [("poly", [(.35, .2), (.65, .2), (.85, .8), (.15, .8)])],
    "dress": [("poly", [(.38, .05), (.62, .05), (.64, .4), (.88, .95), (.12, .95), (.36, .4)])],
    "boot": [("poly", [(.3, .1), (.55, .1), (.55, .65), (.88, .72), (.88, .9), (.3, .9)])],
    "shoe": [("poly", [(.08, .55), (.4, .5), (.6, .62), (.92, .66), (.92, .8), (.08, .8)])],
    "bag": [("poly", [(.18, .38), (.82, .38), (.88, .9), (.12, .9)]),
            ("poly", [(.32, .38), (.38, .12), (.62, .12), (.68, .38), (.6, .38), (.56, .2),
                      (.44, .2), (.4, .38)])],
    "clutch": [("poly", [(.1, .35), (.9, .35), (.9, .7), (.1, .7)])],
    "necklace": [("poly", [(.2, .1), (.3, .1), (.5, .55), (.7, .1), (.8, .1), (.5, .68)]),
                 ("ellipse", [(.4, .62), (.6, .85)])],
    "earrings": [("ellipse", [(.15, .3), (.42, .75)]), ("ellipse", [(.58, .3), (.85, .75)])],
    "sunglasses": [("ellipse", [(.08, .35), (.46, .68)]), ("ellipse", [(.54, .35), (.92, .68)]),
                   ("poly", [(.44, .42), (.56, .42), (.56, .48), (.44, .48)])],
    "hat": [("ellipse", [(.05, .55), (.95, .8)]), ("ellipse", [(.25, .2), (.75, .72)])],
    "belt": [("poly", [(.03, .42), (.97, .42), (.97, .58), (.03, .58)]),
             ("poly", [(.42, .36), (.58, .36), (.58, .64), (.42, .64)])],
    "bracelet": [("ellipse", [(.15, .15), (.85, .85)])],
}
