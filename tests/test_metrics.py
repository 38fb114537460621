"""Metric files: JSON lines, and TensorBoard event files read back by TensorBoard itself."""

import json

from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bilstm_jax import metrics


def test_metric_writer_writes_jsonl_and_tensorboard_events(tmp_path, capsys):
  writer = metrics.MetricWriter(tmp_path, total_steps=20)
  writer.write(10, {"loss": 2.5, "learning_rate": 0.2})
  writer.write(20, {"loss": 1.25, "valid_loss": 1.5})
  writer.close()

  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"step": 10, "loss": 2.5, "learning_rate": 0.2},
                   {"step": 20, "loss": 1.25, "valid_loss": 1.5}]
  assert "step 20/20: loss 1.25, valid_loss 1.5" in capsys.readouterr().out

  events = EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert sorted(events.Tags()["scalars"]) == ["learning_rate", "loss", "valid_loss"]
  assert [(e.step, e.value) for e in events.Scalars("loss")] == [(10, 2.5), (20, 1.25)]

  with Image.open(metrics.save_curves(tmp_path, size=(320, 200))) as curves:
    assert curves.format == "PNG" and curves.size == (320, 200)


def test_masked_crc32c_matches_known_value():
  # CRC-32C("123456789") = 0xE3069283 (RFC 3720); then TFRecord's rotate-and-offset mask.
  crc = 0xE3069283
  assert metrics._masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
