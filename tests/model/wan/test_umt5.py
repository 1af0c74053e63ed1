"""umT5 (Wan 2.1's text encoder) and its tokenizer against the reference, on the pipeline fixture.

tests/fixtures/wan/make_pipeline_fixture.py trained a tiny sentencepiece model,
built a random perturbed UMT5EncoderModel with transformers and recorded the
token ids, the encoder's hidden states and WanPipeline's prompt embeddings
(versions in pipeline_versions.json).
"""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from videojam_jax.model import diffusers_format as fmt
from videojam_jax.model import functional
from videojam_jax.model.wan import text as text_lib
from videojam_jax.model.wan import umt5
from videojam_jax.model.wan import weights
from videojam_jax.parallel import sharding

PIPELINE = pathlib.Path(__file__).parents[2] / "fixtures" / "wan" / "pipeline"
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def outputs():
  return dict(np.load(PIPELINE.parent / "pipeline_outputs.npz"))


@pytest.fixture(scope="module")
def plan():
  return sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))


@pytest.fixture(scope="module")
def encoder(plan):
  return text_lib.WanTextEncoder.from_pipeline(PIPELINE, plan, max_length=MAX_LENGTH)


def _rel(ours, theirs):
  err = np.abs(np.asarray(ours, np.float64) - theirs).max()
  rel = err / np.abs(theirs).max()
  print(f"max abs {err:.3g}, max abs / max |ref| {rel:.3g}")
  return rel


def test_tokenizer_matches_transformers(encoder, outputs):
  # Prompts: plain, one needing HTML unescaping and whitespace collapsing, one
  # truncated (its EOS kept at the end), and the empty negative prompt.
  prompts = list(outputs["prompts"]) + [""]
  ids, mask = encoder.tokenizer(prompts, MAX_LENGTH)
  np.testing.assert_array_equal(ids, outputs["token_ids"])
  np.testing.assert_array_equal(mask, outputs["token_mask"])
  assert mask[2].all() and ids[2, -1] == encoder.tokenizer.eos_id      # truncated
  assert mask[3].sum() == 1 and ids[3, 0] == encoder.tokenizer.eos_id  # "" is just EOS


def test_clean_prompt_unescapes_and_collapses_whitespace():
  assert text_lib.clean_prompt("  two \n squares &amp;amp; a\tdisc ") == "two squares & a disc"


def test_encoder_matches_transformers(encoder, outputs):
  hidden = jax.jit(lambda p, i, m: nnx.merge(encoder.graphdef, p)(i, m))(
      encoder.params, outputs["token_ids"], outputs["token_mask"])
  assert _rel(hidden, outputs["hidden_states"]) < 1e-5


def test_prompt_embeddings_match_the_pipeline(encoder, outputs):
  embeddings, mask = encoder(list(outputs["prompts"]))
  assert embeddings.shape == outputs["prompt_embeds"].shape
  assert _rel(embeddings, outputs["prompt_embeds"]) < 1e-5
  assert not embeddings[~mask].any()         # zero past each prompt's length, as there
  negative, _ = encoder([""] * 3)
  assert _rel(negative, outputs["negative_embeds"]) < 1e-5


def test_bfloat16_compute_stays_close(plan, outputs):
  bf16 = text_lib.WanTextEncoder.from_pipeline(PIPELINE, plan, dtype=jnp.bfloat16,
                                               max_length=MAX_LENGTH)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16.params))
  embeddings, _ = bf16(list(outputs["prompts"]))
  assert 1e-5 < _rel(embeddings, outputs["prompt_embeds"]) < 5e-2


def test_relative_position_buckets_match_the_published_config(outputs):
  published = umt5.PUBLISHED["umt5-xxl"]
  buckets = umt5.relative_position_buckets(512, published.relative_attention_num_buckets,
                                           published.relative_attention_max_distance)
  # The reference table is over k - q = -511..511: row q = 511 holds -511..0, row 0 0..511.
  np.testing.assert_array_equal(buckets[511], outputs["published_buckets"][:512])
  np.testing.assert_array_equal(buckets[0], outputs["published_buckets"][511:])


def test_export_round_trips_and_reads_the_reference_config(encoder, tmp_path):
  files = weights.save_umt5(tmp_path / "te", encoder.config, encoder.params)
  assert "model.safetensors" in files
  assert weights.read_umt5_config(tmp_path / "te") == encoder.config
  config = json.loads((tmp_path / "te" / "config.json").read_text())
  reference = json.loads((PIPELINE / "text_encoder" / "config.json").read_text())
  for field in ("d_model", "d_kv", "num_heads", "d_ff", "num_layers", "vocab_size",
                "relative_attention_num_buckets", "relative_attention_max_distance",
                "feed_forward_proj", "dense_act_fn", "model_type", "architectures"):
    assert config[field] == reference[field], field
  _, abstract = functional.abstract_split(
      lambda: umt5.UMT5Encoder(encoder.config, rngs=nnx.Rngs(0)), encoder.plan)
  again = weights.load_umt5(tmp_path / "te", abstract)
  jax.tree.map(np.testing.assert_array_equal, again, encoder.params)


def test_folders_that_are_not_umt5_are_named(tmp_path, plan):
  with pytest.raises(fmt.CheckpointError, match="tokenizer/"):
    text_lib.WanTextEncoder.from_pipeline(PIPELINE / "transformer", plan)
  shutil.copytree(PIPELINE, tmp_path / "p")
  (tmp_path / "p" / "tokenizer" / "tokenizer.json").unlink()
  with pytest.raises(fmt.CheckpointError, match="no tokenizer.json"):
    text_lib.WanTextEncoder.from_pipeline(tmp_path / "p", plan)
  with pytest.raises(fmt.CheckpointError, match="UMT5EncoderModel"):
    weights.read_umt5_config(PIPELINE / "vae")
  shutil.copytree(PIPELINE / "text_encoder", tmp_path / "te")
  (tmp_path / "te" / "model-00002-of-00005.safetensors").unlink()
  with pytest.raises(fmt.CheckpointError, match="missing: model-00002-of-00005"):
    config = weights.read_umt5_config(tmp_path / "te")
    _, abstract = functional.abstract_split(lambda: umt5.UMT5Encoder(config, rngs=nnx.Rngs(0)), plan)
    weights.load_umt5(tmp_path / "te", abstract)
