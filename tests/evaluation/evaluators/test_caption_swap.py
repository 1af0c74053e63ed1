"""videojam_jax/evaluation/evaluators/caption_swap.py: does the model read each word kind?"""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from videojam_jax.data import pipeline
from videojam_jax.evaluation import caption_swaps
from videojam_jax.evaluation import evaluators
from videojam_jax.evaluation.evaluators import caption_swap
from videojam_jax.training import flow_matching

NUM_CLIPS = 4


def evaluate(exp, params, **options):
  block = ml_collections.ConfigDict(dict(dict(num_clips=NUM_CLIPS, batch_size=2, times=(0.05, 0.5)),
                                         **options))
  return dict(caption_swap.Evaluator(block, evaluators.EvalContext(exp, None)).run(params, 0))


def test_ratios_are_swapped_over_true_loss_of_the_clips_with_the_word(setup):
  exp, params = setup
  values = evaluate(exp, params, swaps=("colour",), times=(0.05,))
  captions = pipeline.read_captions(exp.config.data.dataset_dir, "validation", NUM_CLIPS)
  assert values["colour_clips"] == NUM_CLIPS     # every caption names a colour
  ds = pipeline.create_dataset(exp.config.data, "validation", batch_size=NUM_CLIPS,
                               captions=exp.captions, shuffle=False, repeat=False, with_index=True)
  batch = {k: jnp.asarray(v) for k, v in next(iter(ds)).items()}
  key = jax.random.fold_in(jax.random.key(0), 0)
  true = flow_matching.fixed_time_losses(exp.model.apply, params, batch, 0.05, key, True)
  text, mask = exp.captions([caption_swaps.swap_colours(c) for c in captions])
  swapped = flow_matching.fixed_time_losses(
      exp.model.apply, params, dict(batch, text=jnp.asarray(text), text_mask=jnp.asarray(mask)),
      0.05, key, True)
  for name in ("video_loss", "motion_loss"):
    expected = float(swapped[name].mean() / true[name].mean())
    assert values[f"colour_{name}_ratio"] == pytest.approx(expected, rel=1e-5)
  assert values["colour_video_loss_ratio"] != pytest.approx(1.0, abs=1e-4)   # it reads colours


def test_a_model_that_cannot_read_captions_scores_one(setup):
  exp, params = setup
  # Zero text projection: every caption token is the same vector (its bias).
  deaf = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if "text_proj" in jax.tree_util.keystr(path)
      and "kernel" in jax.tree_util.keystr(path) else x, params)
  values = evaluate(exp, deaf)
  for kind in caption_swaps.SWAPS:
    if values[f"{kind}_clips"]:
      assert values[f"{kind}_video_loss_ratio"] == pytest.approx(1.0, abs=1e-6), kind
      assert values[f"{kind}_motion_loss_ratio"] == pytest.approx(1.0, abs=1e-6), kind


def test_clip_counts_and_bad_options(setup):
  exp, params = setup
  values = evaluate(exp, params, swaps=("direction", "spin"))
  captions = pipeline.read_captions(exp.config.data.dataset_dir, "validation", NUM_CLIPS)
  assert values["direction_clips"] == sum(" moving " in c for c in captions)
  assert values["spin_clips"] == sum("clockwise" in c for c in captions)
  with pytest.raises(evaluators.EvaluatorConfigError, match="choose from"):
    evaluate(exp, params, swaps=("tense",))
  with pytest.raises(evaluators.EvaluatorConfigError, match=r"unknown option\(s\) \['swap'\]"):
    evaluate(exp, params, swap=("colour",))
