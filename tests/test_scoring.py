"""Scoring the user's own images, completing outfits, and the whole evaluation on the data layer.

The second half runs on the real pipeline: the tiny synthetic Polyvore, an image
model (tiny Inception), evaluate() as main calls it, and the command line's tasks
on the real sample images in shared/data/polyvore/images_sample.
"""

import json
import pathlib

import pytest
from PIL import Image

from bilstm_jax import input_pipeline
from bilstm_jax.evaluation import cli, compatibility, report, scoring
from bilstm_jax.evaluation.errors import (ConfigMismatchError, EvaluationError,
                                          NotSupportedError, UnreadableImageError)
from bilstm_jax.evaluation.predictor import Predictor, rule_from_config
from bilstm_jax.models.outfit_lstm import OutfitModel
from tests import _evaluation_world as world
from tests.helpers import SHARED_POLYVORE

SAMPLE = SHARED_POLYVORE / "images_sample" / "209512492"
needs_samples = pytest.mark.skipif(not SAMPLE.is_dir(),
                                   reason=f"{SAMPLE} absent (../shared is not beside the repo)")


def _user(feats, ids):
  rows = feats.rows(ids)
  return feats.vse[rows], feats.rnn[rows]


@needs_samples
def test_load_images_real_samples_and_bad_files(tmp_path):
  paths = sorted(SAMPLE.glob("[1-9].jpg"))[:4]
  images = scoring.load_images(paths, 48)
  assert images.shape == (4, 48, 48, 3) and -1 <= images.min() and images.max() <= 1
  gray = tmp_path / "gray.png"
  Image.new("L", (10, 30), 128).save(gray)  # grayscale, not square: converted and resized
  assert scoring.load_images([gray], 16).shape == (1, 16, 16, 3)
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"\xff\xd8 not really a jpeg")
  with pytest.raises(UnreadableImageError, match="broken.jpg"):
    scoring.load_images([paths[0], broken], 48)
  with pytest.raises(UnreadableImageError, match="missing.jpg"):
    scoring.load_images([tmp_path / "missing.jpg"], 48)
  with pytest.raises(EvaluationError, match="No image files"):
    scoring.load_images([], 48)


def test_score_equals_compat_score_and_orders_by_category():
  config, model, variables, feats, outfits = world.trained()
  rule, predictor = rule_from_config(config), Predictor(model, variables)
  ids = [i for i, _, _ in outfits[4]]
  shuffled = ids[::-1]
  res = scoring.score_outfit(predictor, feats, rule, *_user(feats, shuffled), order="category")
  assert [shuffled[k] for k in res.order] == ids  # back in the catalogue's category order
  # The catalogue already holds these items: the score is the compat score up to the extra
  # candidate rows the user's copies add.
  f, b = compatibility.lstm_scores(predictor, feats, compatibility.prepare(
      [{"label": 1, "items": ids}], feats))
  assert res.score == pytest.approx(float(f[0] + b[0]), abs=0.5)
  best = scoring.score_outfit(predictor, feats, rule, *_user(feats, shuffled), order="best")
  assert best.score >= res.score - 1e-6
  given = scoring.score_outfit(predictor, feats, rule, *_user(feats, shuffled), order="given")
  assert given.order == list(range(len(ids)))
  for it in res.items:  # the same item sits in the catalogue: it is a tie at best, never beaten
    assert it.rank >= 1 and (it.better_id is None or it.better_probability > it.probability)
  with pytest.raises(EvaluationError, match="at least 2 items"):
    scoring.score_outfit(predictor, feats, rule, *_user(feats, ids[:1]))


def test_complete_finds_the_missing_item():
  config, model, variables, feats, outfits = world.trained()
  rule, predictor = rule_from_config(config), Predictor(model, variables)
  hits = 0
  for o in outfits[:20]:
    ids = [i for i, _, _ in o]
    top = scoring.complete(predictor, feats, rule, *_user(feats, ids[:1] + ids[2:]), blank=1,
                           top=10)
    wanted_cat = o[1][1]
    hits += sum(feats.categories[feats.index[i]] == wanted_cat for i, _ in top[:3]) > 0
  assert hits >= 12, hits  # the blank's category comes first most of the time
  with pytest.raises(EvaluationError, match="blank position must be 1..3"):
    scoring.complete(predictor, feats, rule, *_user(feats, ids[:2]), blank=5)


@pytest.fixture(scope="module")
def pipeline(tiny_cache):
  """The tiny synthetic Polyvore through the data layer, and an image model on it."""
  config = world.load_config("tiny")
  with config.unlocked():
    config.data.cache_dir = str(tiny_cache)
  dataset = input_pipeline.prepare(config.data)
  model = OutfitModel(config.model, vocab_size=dataset.vocab.size, feature_dim=None)
  variables = world.random_variables(model, dataset.example_batch(1))
  return config, model, variables, dataset


def test_evaluate_on_the_data_layer(pipeline, tmp_path, capsys):
  config, model, variables, dataset = pipeline
  rep = cli.run("all", config, model, variables, dataset, 4, str(tmp_path))
  keys = {(m["task"], m["protocol"], m["split"]) for m in rep["metrics"]}
  assert keys == {(t, p, "test") for t in ("fitb", "compat_auc") for p in ("original", "resampled")}
  assert rep["checkpoint_step"] == 4 and rep["data"] == "synthetic"
  assert rep["model"] == {"kind": "bilstm", "directions": "both", "vse": True, "rule": "bilstm"}
  on_disk = json.loads((tmp_path / "report.json").read_text())
  assert on_disk["metrics"] == rep["metrics"]
  table = capsys.readouterr().out
  assert "FITB (original, test): " in table and "Compat AUC (resampled, test): " in table
  for m in rep["metrics"]:
    assert (m.get("questions") or m.get("outfits")) > 0
    assert pathlib.Path(report.scores_path(tmp_path, "fitb" if m["task"] == "fitb" else "compat",
                                           m["protocol"], "test")).exists()
  png = tmp_path / "generated" / "outfit_0.png"
  ids = json.loads((tmp_path / "generated" / "outfit_0.json").read_text())["items"]
  assert Image.open(png).size == (128 * len(ids), 128)
  # The resampled protocol: every candidate shares the blank's category.
  table = dataset.item_table("test")
  category = dict(zip(table.ids, table.categories.tolist()))
  resampled = dataset.questions("fitb", "resampled")
  assert resampled and all(len({category[a] for a in q["answers"]}) == 1 for q in resampled)
  original = dataset.questions("fitb", "original")
  assert any(len({category[a] for a in q["answers"]}) > 1 for q in original)
  # A single task updates its entries and keeps the others.
  cli.run("fitb", config, model, variables, dataset, 5, str(tmp_path), protocols=["original"])
  again = json.loads((tmp_path / "report.json").read_text())
  assert len(again["metrics"]) == 4 and again["checkpoint_step"] == 5


@needs_samples
def test_commands_on_real_sample_images(pipeline, tmp_path, capsys):
  config, model, variables, dataset = pipeline
  images = [str(p) for p in sorted(SAMPLE.glob("[1-9].jpg"))[:4]]
  res = cli.run("score", config, model, variables, dataset, 4, str(tmp_path), images=images,
                out=str(tmp_path / "score.json"))
  out = capsys.readouterr().out
  assert "Compatibility score: " in out and out.count(" rank ") == 4
  assert sorted(res.order) == [0, 1, 2, 3]
  assert json.loads((tmp_path / "score.json").read_text())["score"] == pytest.approx(res.score)
  best = cli.run("complete", config, model, variables, dataset, 4, str(tmp_path),
                 images=images[:2], blank=2, top=3, out=str(tmp_path / "done"))
  assert len(best) == 3 and Image.open(tmp_path / "done.png").size == (3 * 128, 128)
  table = dataset.item_table("test")
  gen = cli.run("generate", config, model, variables, dataset, 4, str(tmp_path),
                query=[table.ids[0], table.ids[7]], text=dataset.vocab.words[0],
                end_threshold=0.0, out=str(tmp_path / "gen"))
  assert table.ids[0] in gen.ids and table.ids[7] in gen.ids
  assert Image.open(tmp_path / "gen.png").size == (128 * len(gen.ids), 128)
  path = cli.run("extract", config, model, variables, dataset, 4, str(tmp_path))
  assert pathlib.Path(path).exists()


def test_bad_input_gives_clear_errors(pipeline, tmp_path):
  config, model, variables, dataset = pipeline
  broken = tmp_path / "broken.jpg"
  broken.write_text("nope")
  with pytest.raises(UnreadableImageError, match="broken.jpg"):
    cli.run("score", config, model, variables, dataset, 4, str(tmp_path), images=[str(broken)])
  with pytest.raises(EvaluationError, match="Unknown item id.*'999_1'"):
    cli.run("generate", config, model, variables, dataset, 4, str(tmp_path), query=["999_1"])
  with pytest.raises(EvaluationError, match="needs --query"):
    cli.run("generate", config, model, variables, dataset, 4, str(tmp_path), query=[])
  with pytest.raises(EvaluationError, match="eval split 'valid'"):
    cli.run("fitb", config, model, variables, dataset, 4, str(tmp_path), split="valid")
  other = world.load_config("tiny")
  with other.unlocked():
    other.model.embed_dim = other.model.hidden_dim = 16
  wrong = OutfitModel(other.model, vocab_size=dataset.vocab.size)
  with pytest.raises(ConfigMismatchError, match="config.json"):
    cli.run("all", other, wrong, variables, dataset, 4, str(tmp_path))
  cached = OutfitModel(config.model, vocab_size=dataset.vocab.size, feature_dim=8)
  with pytest.raises(NotSupportedError, match="cached encoder features"):
    cli._user_items(config, cached, variables, [str(broken)])
