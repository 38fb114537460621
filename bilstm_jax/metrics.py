"""Metrics on process 0: JSON lines, TensorBoard event files (no TensorFlow), progress.

One JSON object per logged step goes to `<workdir>/metrics.jsonl`, the same
scalars to a TensorBoard event file in `<workdir>/tensorboard/`, and a progress
line to the console: a redrawn bar on a terminal, plain log lines otherwise.
"""

import json
import os
import socket
import struct
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np
from etils import epath


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
  """The TFRecord checksum: CRC-32C, rotated and offset."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  key = _varint(number << 3 | wire_type)
  if wire_type == 2:  # length-delimited
    return key + _varint(len(payload)) + payload
  return key + payload


def _event(wall_time: float, step: int, *, file_version: str = "",
           scalars: Mapping[str, float] | None = None) -> bytes:
  """A serialised tensorboard Event proto (wall_time=1, step=2, file_version=3, summary=5)."""
  msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version:
    msg += _field(3, 2, file_version.encode())
  if scalars:
    values = b"".join(
        _field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
        for tag, value in scalars.items())
    msg += _field(5, 2, values)
  return msg


class EventFileWriter:
  """Appends scalar summaries to a TensorBoard event file (TFRecord framing)."""

  def __init__(self, logdir: str | os.PathLike):
    logdir = epath.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = logdir / name
    self._file = self.path.open("wb")
    self._write(_event(time.time(), 0, file_version="brain.Event:2"))

  def _write(self, record: bytes) -> None:
    header = struct.pack("<Q", len(record))
    self._file.write(header + struct.pack("<I", _masked_crc32c(header))
                     + record + struct.pack("<I", _masked_crc32c(record)))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    self._write(_event(time.time(), step, scalars=values))
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class MetricWriter:
  """JSON lines + TensorBoard + console; silent on every process but 0."""

  def __init__(self, workdir: str | os.PathLike, total_steps: int):
    self.active = jax.process_index() == 0
    self.total_steps = total_steps
    self._tty = sys.stdout.isatty()
    if self.active:
      workdir = epath.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = (workdir / "metrics.jsonl").open("a")
      self._events = EventFileWriter(workdir / "tensorboard")

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    """Records `values` (python or 0-d arrays) at `step` and shows progress."""
    if not self.active:
      return
    values = {k: float(v) for k, v in values.items()}
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self._jsonl.flush()
    self._events.scalars(step, values)
    self._show(step, values)

  def _show(self, step: int, values: Mapping[str, float]) -> None:
    shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items()
                      if k in ("loss", "valid_loss", "steps_per_sec"))
    if self._tty:
      width = 30
      done = int(width * step / max(self.total_steps, 1))
      bar = "#" * done + "." * (width - done)
      print(f"\r[{bar}] {step}/{self.total_steps} {shown}", end="", flush=True)
      if step >= self.total_steps:
        print()
    else:
      print(f"step {step}/{self.total_steps}: {shown}", flush=True)

  def close(self) -> None:
    if self.active:
      if self._tty:
        print()
      self._jsonl.close()
      self._events.close()


def log(message: str) -> None:
  """Prints on process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


_CURVE_COLOURS = {"loss": (0, 0, 0), "forward_loss": (31, 119, 180), "backward_loss": (255, 127, 14),
                  "vse_loss": (44, 160, 44), "siamese_loss": (148, 103, 189),
                  "valid_loss": (214, 39, 40)}


def save_curves(workdir: str | os.PathLike, size: tuple[int, int] = (640, 360)) -> epath.Path | None:
  """Draws the loss curves of `<workdir>/metrics.jsonl` to `<workdir>/curves.png` (process 0)."""
  from PIL import Image, ImageDraw  # only needed here
  workdir = epath.Path(workdir)
  if jax.process_index() != 0 or not (workdir / "metrics.jsonl").exists():
    return None
  series: dict[str, list[tuple[int, float]]] = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    for key in _CURVE_COLOURS:
      if key in record and np.isfinite(record[key]):
        series.setdefault(key, []).append((record["step"], record[key]))
  points = [p for s in series.values() for p in s]
  if len(points) < 2:
    return None
  (w, h), margin = size, 40
  steps, values = zip(*points)
  x0, x1, y0, y1 = min(steps), max(max(steps), min(steps) + 1), min(values), max(values)
  y1 = y1 if y1 > y0 else y0 + 1
  scale = lambda s, v: (margin + (s - x0) / (x1 - x0) * (w - 2 * margin),
                        h - margin - (v - y0) / (y1 - y0) * (h - 2 * margin))
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  draw.rectangle([margin, margin, w - margin, h - margin], outline=(180, 180, 180))
  draw.text((margin, h - margin + 5), f"step {x0}", fill="black")
  draw.text((w - margin - 60, h - margin + 5), f"step {x1}", fill="black")
  draw.text((2, margin - 12), f"{y1:.3g}", fill="black")
  draw.text((2, h - margin - 12), f"{y0:.3g}", fill="black")
  for k, (key, pts) in enumerate(series.items()):
    colour = _CURVE_COLOURS[key]
    if len(pts) > 1:
      draw.line([scale(s, v) for s, v in pts], fill=colour, width=2)
    draw.text((margin + 5 + 110 * (k % 5), 5 + 14 * (k // 5)), key, fill=colour)
  path = workdir / "curves.png"
  with path.open("wb") as f:
    image.save(f, format="PNG")
  return path
