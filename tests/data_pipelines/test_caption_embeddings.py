"""data_pipelines/caption_embeddings.py (the embed_captions command): a dataset's captions through umT5 into the trainer's .npz."""

import ml_collections
import numpy as np
import pytest

from data_pipelines import caption_embeddings as embed_captions
from tests.conftest import REPO
from videojam_jax.data import pipeline
from videojam_jax.data import text as text_lib
from videojam_jax.model.wan import text as wan_text
from videojam_jax.parallel import sharding

PIPELINE = REPO / "tests" / "fixtures" / "wan" / "pipeline"
MAX_LENGTH, WIDTH = 16, 32      # the fixture umT5's d_model


def config_for(make_tiny_config, dataset_dir, out):
  config = make_tiny_config(dataset_dir)
  config.model.text.source = "precomputed"
  config.model.text.max_length = MAX_LENGTH
  config.model.text.embedding_dim = WIDTH
  config.data.text_encoder = str(PIPELINE)
  config.data.text_embeddings = str(out)
  return config


def test_embeds_every_caption_as_the_encoder_does(make_tiny_config, synthetic_data, tmp_path,
                                                  capsys):
  dataset_dir, _ = synthetic_data
  out = tmp_path / "captions_umt5.npz"
  config = config_for(make_tiny_config, dataset_dir, out)
  embed_captions.embed_captions(config, batch_size=3)
  expected = sorted(set(pipeline.read_captions(dataset_dir, "train", 10 ** 6)
                        + pipeline.read_captions(dataset_dir, "validation", 10 ** 6)))
  with np.load(out) as f:
    assert list(f["captions"]) == expected and f["embeddings"].shape == (len(expected),
                                                                         MAX_LENGTH, WIDTH)
    embeddings, masks = f["embeddings"], f["masks"]
  plan = sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))
  encoder = wan_text.WanTextEncoder.from_pipeline(PIPELINE, plan, max_length=MAX_LENGTH)
  for i in (0, len(expected) - 1):      # batch-independent: the same as one at a time
    one, mask = encoder([expected[i]])
    np.testing.assert_allclose(embeddings[i], one[0], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(masks[i], mask[0])
  # The trainer's reader takes it, and a rerun does nothing.
  lookup = text_lib.PrecomputedText(str(out), MAX_LENGTH, WIDTH)
  assert all(c in lookup for c in expected)
  capsys.readouterr()
  embed_captions.embed_captions(config)
  assert "nothing to do" in capsys.readouterr().out
  assert not list(tmp_path.glob("*.tmp*"))


def test_impossible_requests_are_named(make_tiny_config, synthetic_data, tmp_path):
  dataset_dir, _ = synthetic_data
  config = config_for(make_tiny_config, dataset_dir, tmp_path / "e.npz")
  config.model.text.embedding_dim = 64
  with pytest.raises(ValueError, match="writes 32-wide embeddings, model.text.embedding_dim is 64"):
    embed_captions.embed_captions(config)
  config = config_for(make_tiny_config, dataset_dir, tmp_path / "e.npz")
  config.model.text.source = "builtin"
  with pytest.raises(ValueError, match="only read with 'precomputed'"):
    embed_captions.embed_captions(config)
  config = config_for(make_tiny_config, dataset_dir, tmp_path / "e.npz")
  config.data.text_encoder = ""
  with pytest.raises(ValueError, match="set config.data.text_encoder"):
    embed_captions.embed_captions(config)
  assert not (tmp_path / "e.npz").exists()
