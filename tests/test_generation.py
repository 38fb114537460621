"""Outfit generation (greedy Bi-LSTM decoding, filling between queries, text re-ranking) and strips."""

import io

import numpy as np
import pytest
from PIL import Image

from bilstm_jax.evaluation import generation
from bilstm_jax.evaluation.errors import EvaluationError, NotSupportedError, UnknownItemError
from bilstm_jax.evaluation.predictor import Predictor, Rule, rule_from_config
from tests import _evaluation_world as world


@pytest.fixture(scope="module")
def gen():
  """A generator that decodes until END is the best item (the tiny model's P(END) is never tiny)."""
  config, model, variables, feats, outfits = world.trained()
  return generation.Generator(Predictor(model, variables), feats, rule_from_config(config),
                              end_threshold=None), outfits


def test_one_query_decodes_both_ways_to_end(gen):
  g, outfits = gen
  query = outfits[0][0][0]
  out = g.generate([query])
  assert out.is_query.count(True) == 1 and out.ids[out.is_query.index(True)] == query
  assert len(set(out.ids)) == len(out.ids) and 1 < len(out.ids) <= 1 + 2 * g.max_steps
  assert g.generate([query]).ids == out.ids  # deterministic
  forward = generation.Generator(g.predictor, g.features, Rule("lstm", True, False),
                                 end_threshold=None)
  fwd_only = forward.generate([query])
  assert fwd_only.ids[0] == query and len(fwd_only.ids) > 1  # nothing before the query
  eager = generation.Generator(g.predictor, g.features, g.rule, end_threshold=0.0)
  assert eager.generate([query]).ids == [query]  # the original's P(END) threshold stops at once


def test_several_queries_are_placed_and_filled(gen):
  g, outfits = gen
  first, second = outfits[1][0][0], outfits[2][-1][0]  # a top and an accessory-end item
  out = g.generate([first, second])
  assert [i for i, q in zip(out.ids, out.is_query) if q] == [first, second] or \
      [i for i, q in zip(out.ids, out.is_query) if q] == [second, first]
  assert len(set(out.ids)) == len(out.ids)
  fill = g.fill(g.features.index[first], g.features.index[second], 2, set())
  assert len(fill) == 2 and len(set(fill)) == 2


def test_text_reranks_toward_the_text_vector(gen):
  g, outfits = gen
  target = outfits[5][1][0]
  vec = g.features.vse[g.features.index[target]]
  vec = vec / np.linalg.norm(vec)
  repeat = generation.Generator(g.predictor, g.features, g.rule, end_threshold=None,
                                allow_repeats=True)
  out = repeat.generate([outfits[0][0][0]], text_vector=vec, text_weight=1000.0, text="x")
  assert all(i == target for i, q in zip(out.ids, out.is_query) if not q)
  assert out.before_text != out.ids and out.text == "x"
  unique = g.generate([outfits[0][0][0]], text_vector=vec, text_weight=1000.0)
  assert target in unique.ids and len(set(unique.ids)) == len(unique.ids)


def test_text_vector_needs_a_known_word():
  config, model, variables, _, _ = world.trained()

  class Vocab:
    words = ["blue", "red"]
    unk_id = 3
    def ids(self, text):
      return [{"blue": 1, "red": 2}.get(w, 3) for w in text.split()]

  vec = generation.text_vector(model, variables, Vocab(), "blue blue denim")
  assert vec.shape == (config.model.embed_dim,) and np.linalg.norm(vec) == pytest.approx(1.0)
  with pytest.raises(EvaluationError, match="No word of the text query 'denim'"):
    generation.text_vector(model, variables, Vocab(), "denim")


def test_bad_queries(gen):
  g, _ = gen
  with pytest.raises(EvaluationError, match="at least one query"):
    g.generate([])
  with pytest.raises(UnknownItemError, match="'123_9'"):
    g.generate(["123_9"])
  with pytest.raises(NotSupportedError, match="LSTM"):
    generation.Generator(g.predictor, g.features, Rule("pairwise", name="siamese"))


def test_strip_is_a_png_of_the_expected_width(gen, tmp_path):
  g, outfits = gen
  out = g.generate([outfits[0][0][0]])
  images = lambda ids: [np.full((20, 20, 3), -0.5, np.float32) if k % 2 else None
                        for k in range(len(ids))]
  png, js = generation.save(out, tmp_path / "strip", images)
  data = open(png, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  im = Image.open(io.BytesIO(data))
  assert im.size == (generation.TILE * len(out.ids), generation.TILE)
  q = out.is_query.index(True) * generation.TILE
  assert im.getpixel((q + 1, 1)) == generation.QUERY_FRAME  # the query tile is framed
  other = (out.is_query.index(False)) * generation.TILE
  assert im.getpixel((other + 1, 1)) != generation.QUERY_FRAME
  assert open(js).read().count(out.ids[0]) >= 1
  with pytest.raises(EvaluationError, match="empty"):
    generation.render_strip([], [])
