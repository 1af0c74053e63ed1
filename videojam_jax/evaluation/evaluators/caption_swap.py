"""Does the model read each kind of caption word? Held-out loss with the word swapped.

The held-out clips of `heldout_loss` (same clips, times and noise) are scored twice:
with their own captions, and with every word of one kind swapped for another of its
kind (`evaluation/caption_swaps.py`: colour, shape, direction, spin; synthetic captions
only). For each kind, over the clips whose caption has such a word, it yields

  <kind>_video_loss_ratio   swapped / true video loss, mean over the times
  <kind>_motion_loss_ratio  the same for the motion loss (VideoJAM models)
  <kind>_clips              how many clips had such a word

and the ratios at each time t (`<kind>_video_loss_ratio_t<t>`). A ratio of 1 means the
model ignores that kind of word. Samples can only show that a model fails to follow a
word; this shows whether the loss has taught the model to use the word at all.
Includes noisy times by default (t = 0.05: nearly pure noise), because there the
caption is all the model knows.

  config.evals.caption_swap = dict(type="caption_swap", every_steps=400, weights="ema",
                                   swaps=("colour", "direction"), num_clips=32)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from videojam_jax.data import pipeline
from videojam_jax.evaluation import caption_swaps
from videojam_jax.evaluation import evaluators
from videojam_jax.evaluation.evaluators import heldout_loss

OPTIONS = heldout_loss.OPTIONS + ("swaps",)
DEFAULT_TIMES = (0.05, 0.3, 0.7)


class Evaluator:
  """Held-out loss ratios, swapped / true caption, per kind of caption word."""

  def __init__(self, options: ml_collections.ConfigDict, context: evaluators.EvalContext):
    evaluators.check_known(options, OPTIONS, "caption_swap")
    config = context.experiment.config
    if config.model.text.source != "builtin":
      raise evaluators.EvaluatorConfigError(
          "caption_swap needs model.text.source='builtin': swapped captions have no "
          "precomputed embeddings")
    self.swaps = tuple(str(s) for s in evaluators.option(options, "swaps", tuple(caption_swaps.SWAPS)))
    unknown = sorted(set(self.swaps) - set(caption_swaps.SWAPS))
    if not self.swaps or unknown:
      raise evaluators.EvaluatorConfigError(
          f"caption_swap.swaps={self.swaps}: choose from {sorted(caption_swaps.SWAPS)}")
    base = {k: options[k] for k in heldout_loss.OPTIONS if k in options}
    base.setdefault("times", DEFAULT_TIMES)
    self._heldout = heldout_loss.Evaluator(ml_collections.ConfigDict(base), context)
    self.times = self._heldout.times
    captions = pipeline.read_captions(config.data.dataset_dir, self._heldout.split,
                                      self._heldout.num_clips)
    self._swapped = {}   # kind -> (batches with swapped captions, clips that changed)
    for kind in self.swaps:
      swapped = [caption_swaps.SWAPS[kind](c) for c in captions]
      changed = np.array([s != c for s, c in zip(swapped, captions)])
      self._swapped[kind] = (self._heldout.with_captions(swapped), changed)
      logging.info("caption_swap: %s swapped in %d of %d clips", kind, changed.sum(),
                   len(captions))

  def run(self, params: Any, step: int) -> Iterator[tuple[str, float]]:
    del step
    true = self._heldout.per_clip(params)
    for kind, (batches, changed) in self._swapped.items():
      yield f"{kind}_clips", float(changed.sum())
      if not changed.any():
        continue
      swapped = self._heldout.per_clip(params, batches)
      for name in true:   # video_loss, motion_loss
        label = f"{kind}_{name}_ratio"
        ratios = swapped[name][changed].mean(axis=0) / true[name][changed].mean(axis=0)
        for t, ratio in zip(self.times, ratios):
          yield f"{label}_t{t:g}", float(ratio)
        yield label, float(np.mean(ratios))
