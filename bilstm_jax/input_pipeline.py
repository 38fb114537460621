"""Padded outfit batches from the Polyvore TFDS records, without tf.data.

`prepare(config.data)` finds (or generates) the data, builds the TFDS records
once under `data.cache_dir` and loads the vocabulary. Batches are numpy dicts
(leading dim = this process's share of the global batch, T = data.max_items):

  images     float32 [B, T, S, S, 3] in [-1, 1]  (image mode)   or
  features   float32 [B, T, D]                   (cached mode: data.encoder_features)
  mask       bool    [B, T]     real items
  lengths    int32   [B]
  tokens     int32   [B, T, L]  word ids, 0 = pad (L = data.max_tokens)
  categories int32   [B, T]

Padded slots hold zeros (mask False); with data.pad_with_last_image their
images repeat the outfit's last image, as the original did. JPEGs are decoded
and resized in a thread pool (PIL releases the GIL).

The training order is a pure function of (seed, step): each epoch is a seeded
permutation, the global batch `step` is a slice of the endless stream of
epochs, and each process takes its contiguous share. So the iterator state is
a small dict, batches can be prefetched freely, and a restart from a saved
state yields exactly the batches that would have come next.
"""

from collections.abc import Iterator, Sequence
import collections
import concurrent.futures
import hashlib
import io
import pathlib

from absl import logging
import ml_collections
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from bilstm_jax import metrics, text
from tfds_polyvore import layout
from tfds_polyvore import polyvore
from tfds_polyvore import synthetic

DEMO_COMMAND = "python -m bilstm_jax.main --config=configs/bilstm.py:demo --workdir=/tmp/demo"
_PREFETCH = 2  # batches prepared ahead of the consumer


class DataNotFoundError(FileNotFoundError):
  """The data the config asks for is not on disk."""


def prepare(data: ml_collections.ConfigDict) -> "Dataset":
  """Locates (or generates) the data, builds its TFDS records and the vocabulary.

  Every check on the user's files runs before any slow work.
  """
  cache = pathlib.Path(data.cache_dir).expanduser()
  features = None
  for name in ("encoder_features", "vocab_file"):
    path = data[name]
    if path and not pathlib.Path(path).expanduser().is_file():
      raise DataNotFoundError(f"data.{name} = {path!r}: no such file.")
  if data.synthetic:
    source = "synthetic"
    key = (f"v{synthetic.VERSION}_{'-'.join(map(str, data.synthetic_outfits))}"
           f"_px{data.synthetic_image_size}_seed{data.synthetic_seed}_rs{data.resample_seed}")
    root = cache / "synthetic" / key
    if not root.exists():
      metrics.log(f"Generating the synthetic Polyvore in {root}")
      synthetic.generate(root, tuple(data.synthetic_outfits), data.synthetic_image_size,
                         data.synthetic_seed, data.resample_seed)
    data_dir = cache / "tfds" / f"synthetic_{key}"
  else:
    source = "maryland"
    root = _check_real_data(data)
    data_dir = cache / "tfds" / f"maryland_{hashlib.sha1(str(root).encode()).hexdigest()[:12]}"
  if data.encoder_features:
    features = FeatureTable.load(pathlib.Path(data.encoder_features).expanduser())
  make_builder = lambda: polyvore.Polyvore(
      config=polyvore.builder_config(images=features is None, resample_seed=data.resample_seed),
      data_dir=str(data_dir), file_format="array_record")
  builder = make_builder()
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  except FileExistsError:  # another process finished the same build (same cache key) first
    metrics.log(f"Another process built {data_dir} at the same time; using its records.")
    builder = make_builder()
  report = dict(builder.info.metadata.get("report", {}))
  if report:
    logging.info("Polyvore build report (%s): %s", builder.data_dir, report)
  ds = Dataset(builder, data, source, features)
  if not ds.num_outfits("train"):
    raise ValueError(f"No usable training outfits in {root}; the build report: {report}")
  if features is not None:
    for split in layout.SPLITS:
      for record in ds.outfits(split):
        features.rows(record["item_ids"])  # a missing item is a clear error now, not mid-run
  return ds


def _check_real_data(data) -> pathlib.Path:
  root = pathlib.Path(data.root).expanduser().resolve() if data.root else None
  missing = (["data.root is not set"] if root is None
             else layout.missing_files(root, images=not data.encoder_features))
  if missing:
    raise DataNotFoundError(
        f"The Maryland Polyvore data was not found{f' under {root}' if root else ''}.\n"
        f"Missing: {', '.join(missing)}\n{layout.LAYOUT_HELP}\n"
        "Set --config.data.root=<dir> to the download, or run the demo on the embedded "
        f"synthetic Polyvore instead:\n  {DEMO_COMMAND}")
  return root


class FeatureTable:
  """Cached encoder features: an .npz with `ids` (str [N]) and `features` (float32 [N, D])."""

  def __init__(self, path: pathlib.Path, ids: Sequence[str], features: np.ndarray):
    if features.ndim != 2 or len(ids) != len(features):
      raise ValueError(f"{path}: expected ids [N] and features [N, D], got {len(ids)} ids and "
                       f"features of shape {features.shape}")
    self.path = path
    self.features = features.astype(np.float32, copy=False)
    self._row = {str(i): r for r, i in enumerate(ids)}

  @classmethod
  def load(cls, path: pathlib.Path) -> "FeatureTable":
    with np.load(path) as z:
      if "ids" not in z or "features" not in z:
        raise ValueError(f"{path} must hold arrays 'ids' and 'features'; it has {list(z)}")
      return cls(path, z["ids"].tolist(), z["features"])

  @property
  def dim(self) -> int:
    return self.features.shape[1]

  def rows(self, ids: Sequence[str]) -> list[int]:
    try:
      return [self._row[i] for i in ids]
    except KeyError as e:
      raise KeyError(f"Item {e.args[0]} has no cached features in {self.path}; recompute the "
                     "feature cache for this dataset.") from None


class OutfitSource:
  """Random access to the decoded outfit records of one split.

  A record: set_id (str), item_ids, names (lists of str), categories (int32
  [n]), length (int) and, in image mode, images (list of JPEG bytes).
  """

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return 0 if self._source is None else len(self._source)

  def __getitem__(self, i: int) -> dict:
    return self.get([i])[0]

  def __iter__(self) -> Iterator[dict]:
    return (self[i] for i in range(len(self)))

  def get(self, indices: Sequence[int]) -> list[dict]:
    return [_decode_record(r) for r in self._source.__getitems__([int(i) for i in indices])]


def _decode_record(r: dict) -> dict:
  out = {"set_id": r["set_id"].decode(), "item_ids": [i.decode() for i in r["item_ids"]],
         "names": [n.decode() for n in r["names"]],
         "categories": np.asarray(r["categories"], np.int32), "length": int(r["length"])}
  if "images" in r:
    out["images"] = list(r["images"])
  return out


class Dataset:
  """A built Polyvore dataset: outfits, questions, vocabulary, batch assembly."""

  def __init__(self, builder: polyvore.Polyvore, data: ml_collections.ConfigDict, source: str,
               features: FeatureTable | None = None):
    self.source = source  # "synthetic" or "maryland"
    self.data_dir = pathlib.Path(builder.data_dir)
    self.report = dict(builder.info.metadata.get("report", {}))
    self.features = features
    self.max_items, self.max_tokens = data.max_items, data.max_tokens
    self.image_size = data.image_size
    self.pad_with_last_image = data.pad_with_last_image
    decoders = None if features is not None else {"images": polyvore.JpegBytes()}
    self._sources = {s: builder.as_data_source(split=s, decoders=decoders)
                     for s in builder.info.splits}
    self._pool = concurrent.futures.ThreadPoolExecutor(data.num_threads)
    self.vocab = self._vocabulary(data)

  def _vocabulary(self, data) -> text.Vocabulary:
    if data.vocab_file:
      return text.Vocabulary.from_word_dict(pathlib.Path(data.vocab_file).expanduser())
    path = self.data_dir / f"vocab_min{data.min_word_count}.txt"
    if not path.exists():
      names = (n for r in self.outfits("train") for n in r["names"])
      text.Vocabulary.build(names, data.min_word_count).save(path)
    return text.Vocabulary.from_word_dict(path)

  @property
  def feature_dim(self) -> int | None:
    """D in cached-feature mode, None in image mode."""
    return None if self.features is None else self.features.dim

  def num_outfits(self, split: str) -> int:
    return len(self.outfits(split))

  def outfits(self, split: str) -> OutfitSource:
    return OutfitSource(self._sources.get(split))

  def questions(self, kind: str, protocol: str) -> list[dict]:
    """FITB questions (question, answers, blank_position) or compat lines (label, items)."""
    if kind not in ("fitb", "compat") or protocol not in ("original", "resampled"):
      raise ValueError(f"questions({kind!r}, {protocol!r}): kind is fitb or compat, "
                       "protocol original or resampled")
    source = self._sources.get(f"{kind}_{protocol}")
    records = [] if source is None else source.__getitems__(list(range(len(source))))
    if kind == "fitb":
      return [{"question": [i.decode() for i in r["question"]],
               "answers": [i.decode() for i in r["answers"]],
               "blank_position": int(r["blank_position"])} for r in records]
    return [{"label": int(r["label"]), "items": [i.decode() for i in r["items"]]}
            for r in records]

  def item_table(self, split: str) -> "ItemTable":
    return ItemTable(self, split)

  def example_batch(self, batch_size: int) -> dict:
    """A real batch of `batch_size` training outfits (for shapes and initialisation)."""
    n = self.num_outfits("train")
    return self.batch(self.outfits("train").get([i % n for i in range(batch_size)]))

  def batch(self, records: Sequence[dict], flips: np.ndarray | None = None) -> dict:
    """Pads outfit records into a batch; flips [B, T] bool mirrors images."""
    b, t, l = len(records), self.max_items, self.max_tokens
    batch = {"mask": np.zeros((b, t), bool), "lengths": np.zeros(b, np.int32),
             "tokens": np.zeros((b, t, l), np.int32), "categories": np.zeros((b, t), np.int32)}
    for r, rec in enumerate(records):
      n = min(rec["length"], t)
      batch["mask"][r, :n] = True
      batch["lengths"][r] = n
      batch["categories"][r, :n] = rec["categories"][:n]
      for k, name in enumerate(rec["names"][:n]):
        ids = self.vocab.ids(name)[:l]
        batch["tokens"][r, k, :len(ids)] = ids
    if self.features is not None:
      feats = np.zeros((b, t, self.features.dim), np.float32)
      for r, rec in enumerate(records):
        n = batch["lengths"][r]
        feats[r, :n] = self.features.features[self.features.rows(rec["item_ids"][:n])]
      batch["features"] = feats
      return batch
    slots = [(r, k) for r in range(b) for k in range(batch["lengths"][r])]
    decoded = self.decode_images([records[r]["images"][k] for r, k in slots],
                                 None if flips is None else [flips[r, k] for r, k in slots])
    images = np.zeros((b, t, self.image_size, self.image_size, 3), np.float32)
    for (r, k), image in zip(slots, decoded):
      images[r, k] = image
    if self.pad_with_last_image:
      for r, n in enumerate(batch["lengths"]):
        images[r, n:] = images[r, n - 1]
    batch["images"] = images
    return batch

  def decode_images(self, jpegs: Sequence[bytes], flips: Sequence[bool] | None = None
                    ) -> np.ndarray:
    """JPEGs -> float32 [n, S, S, 3] in [-1, 1], resized (aspect not kept), in threads."""
    flips = [False] * len(jpegs) if flips is None else flips
    out = np.empty((len(jpegs), self.image_size, self.image_size, 3), np.float32)
    def work(k):
      out[k] = _decode(jpegs[k], self.image_size, flips[k])
    list(self._pool.map(work, range(len(jpegs))))
    return out


def _decode(jpeg: bytes, size: int, flip: bool) -> np.ndarray:
  with Image.open(io.BytesIO(jpeg)) as im:
    im.draft("RGB", (size, size))  # let libjpeg decode at a reduced scale when it can
    im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
  if flip:
    im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(im, np.float32) / 127.5 - 1.0


class ItemTable:
  """Every item of a split, in outfit order: ids, categories, tokens, inputs by batch."""

  def __init__(self, ds: Dataset, split: str):
    self._ds = ds
    self._outfits = ds.outfits(split)
    self.ids, self.names, cats, pos, self._where = [], [], [], [], []
    for o, rec in enumerate(self._outfits):
      n = rec["length"]
      self.ids += rec["item_ids"]
      self.names += rec["names"]
      cats += rec["categories"].tolist()
      pos += [k / max(n - 1, 1) for k in range(n)]
      self._where += [(o, k) for k in range(n)]
    self.categories = np.asarray(cats, np.int32)
    self.positions = np.asarray(pos, np.float32)  # 0 first item of its outfit, 1 last
    self.tokens = np.zeros((len(self.ids), ds.max_tokens), np.int32)
    for i, name in enumerate(self.names):
      ids = ds.vocab.ids(name)[:ds.max_tokens]
      self.tokens[i, :len(ids)] = ids

  def __len__(self) -> int:
    return len(self.ids)

  def inputs(self, rows: Sequence[int]) -> np.ndarray:
    """Images [n, S, S, 3] in [-1, 1] (image mode) or features [n, D] of table rows."""
    if self._ds.features is not None:
      return self._ds.features.features[self._ds.features.rows([self.ids[r] for r in rows])]
    outfit_ids = sorted({self._where[r][0] for r in rows})
    records = dict(zip(outfit_ids, self._outfits.get(outfit_ids)))
    return self._ds.decode_images([records[o]["images"][k]
                                   for o, k in (self._where[r] for r in rows)])

  def batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """The model inputs of all items in order, `batch_size` at a time (the last may be short)."""
    for start in range(0, len(self), batch_size):
      yield self.inputs(range(start, min(start + batch_size, len(self))))


class BatchIterator:
  """This process's share of global batches; `state()` resumes exactly."""

  def __init__(self, ds: Dataset, split: str, global_batch: int, seed: int, step: int,
               process_index: int, process_count: int, train: bool):
    if global_batch % process_count:
      raise ValueError(f"The global batch size {global_batch} must be divisible by the number "
                       f"of processes {process_count}.")
    self._ds, self._split, self._train = ds, split, train
    self._outfits = ds.outfits(split)
    self._n = len(self._outfits)
    if not self._n:
      raise ValueError(f"The {split} split has no outfits.")
    self._global, self._seed, self._step = global_batch, seed, step
    self._local = global_batch // process_count
    self._offset = process_index * self._local
    self._perms = collections.OrderedDict()
    self._producer = concurrent.futures.ThreadPoolExecutor(1)
    self._pending = collections.deque()

  def state(self) -> dict:
    """What to save with a checkpoint: the next batch to yield and what it depends on."""
    return {"seed": self._seed, "step": self._step, "global_batch_size": self._global,
            "num_outfits": self._n}

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict:
    if not self._train and (self._step + 1) * self._global > self._n:
      raise StopIteration
    while len(self._pending) < _PREFETCH:
      s = self._step + len(self._pending)
      self._pending.append(self._producer.submit(self._make, s))
    batch = self._pending.popleft().result()
    self._step += 1
    return batch

  def close(self) -> None:
    self._producer.shutdown(cancel_futures=True)

  def _make(self, step: int) -> dict:
    start = step * self._global + self._offset
    positions = np.arange(start, start + self._local)
    if not self._train:
      return self._ds.batch(self._outfits.get(positions))
    indices = [self._perm(p // self._n)[p % self._n] for p in positions]
    flips = np.random.default_rng([self._seed, 1, step]).random((self._global, self._ds.max_items))
    return self._ds.batch(self._outfits.get(indices),
                          flips[self._offset:self._offset + self._local] < 0.5)

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      self._perms[epoch] = np.random.default_rng([self._seed, 0, epoch]).permutation(self._n)
      if len(self._perms) > 2:  # steps run in order, so older epochs are done with
        self._perms.popitem(last=False)
    return self._perms[epoch]


def train_batches(ds: Dataset, config: ml_collections.ConfigDict, *, process_index: int,
                  process_count: int, state: dict | None = None) -> BatchIterator:
  """Endless shuffled, flipped training batches; `state` (from `.state()`) resumes exactly."""
  seed, step = config.seed, 0
  if state is not None:
    expected = {"seed": seed, "global_batch_size": config.train.batch_size,
                "num_outfits": ds.num_outfits("train")}
    changed = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if changed:
      raise ValueError(f"Cannot resume the data iterator: {changed} (saved, now) differ; the "
                       "same data and batch settings are needed to continue the same order.")
    step = int(state["step"])
  return BatchIterator(ds, "train", config.train.batch_size, seed, step, process_index,
                       process_count, train=True)


def eval_batches(ds: Dataset, split: str, config: ml_collections.ConfigDict, *,
                 process_index: int = 0, process_count: int = 1,
                 batch_size: int | None = None) -> BatchIterator:
  """The split in order, no flips, full global batches only (the remainder is left out)."""
  return BatchIterator(ds, split, batch_size or config.train.batch_size, config.seed, 0,
                       process_index, process_count, train=False)
