"""videojam_jax/evaluation/object_check.py: read a synthetic caption, find its objects."""

import numpy as np
import pytest

from data_pipelines import synthetic_physics as physics
from videojam_jax.evaluation import object_check as oc

T, H, W = 8, 32, 32


def _clips(count: int, max_objects: int = 1):
  return [physics.render_clip(seed, T, H, W, max_objects=max_objects) for seed in range(count)]


def test_parses_every_motion_phrase_of_the_grammar():
  objects = oc.parse_caption(
      "a red circle moving up-left, an orange square bouncing off the walls, a white triangle "
      "falling under gravity, a blue circle rotating clockwise and a cyan square rotating "
      "counterclockwise while moving down, on a mottled background")
  assert [(o.colour, o.shape, o.kind, o.direction) for o in objects] == [
      ("red", "circle", "linear", "up-left"), ("orange", "square", "bouncing", None),
      ("white", "triangle", "falling", None), ("blue", "circle", "rotating", None),
      ("cyan", "square", "rotating", "down")]


def test_captions_of_rendered_scenes_parse_back_to_their_objects():
  for clip in _clips(40, max_objects=3):
    objects = oc.parse_caption(clip.caption)
    assert [(o.colour, o.shape) for o in objects] == [(s.colour, s.shape)
                                                      for s in clip.scene.objects]


@pytest.mark.parametrize("caption", ["a cat on a sofa", "a red circle moving up, on a",
                                     "a red circle flying, on a striped background",
                                     "a red circle moving up a blue square bouncing off the "
                                     "walls, on a striped background"])
def test_other_captions_are_refused(caption):
  with pytest.raises(oc.CaptionGrammarError):
    oc.parse_caption(caption)


def test_rendered_single_object_clips_pass_and_noise_fails():
  clips = _clips(100)
  truth = oc.summarize([c.video for c in clips], [c.caption for c in clips])
  assert truth["objects_present"] == 1.0 and truth["clips_correct"] >= 0.97
  rng = np.random.default_rng(0)
  noise = [rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8) for _ in clips]
  assert oc.summarize(noise, [c.caption for c in clips])["objects_present"] <= 0.05


def test_a_wrong_colour_or_a_reversed_clip_fails():
  clips = [c for c in _clips(60) if c.scene.objects[0].motion.describe().startswith("moving")]
  assert len(clips) >= 8
  videos, captions = [c.video for c in clips], [c.caption for c in clips]
  assert oc.summarize(videos, captions)["clips_correct"] == 1.0
  # Played backwards, a clip moves the opposite way from its caption.
  assert oc.summarize([v[::-1] for v in videos], captions)["objects_moving"] == 0.0
  # The same clips captioned with another colour show no such object.
  recoloured = []
  for c in clips:
    colour = c.scene.objects[0].colour
    other = "red" if colour not in ("red", "orange", "magenta") else "green"
    recoloured.append(c.caption.replace(colour, other, 1))
  assert oc.summarize(videos, recoloured)["objects_present"] <= 0.1


def test_clip_scores_are_per_clip_fractions():
  clips = [c for c in _clips(40) if c.scene.objects[0].motion.describe().startswith("moving")][:6]
  videos, captions = [c.video for c in clips], [c.caption for c in clips]
  scores = [oc.clip_scores(v, c) for v, c in zip(videos, captions)]
  assert all(s == {"objects_present": 1.0, "objects_moving": 1.0, "clip_correct": 1.0}
             for s in scores)
  backwards = oc.clip_scores(videos[0][::-1], captions[0])
  assert backwards == {"objects_present": 1.0, "objects_moving": 0.0, "clip_correct": 0.0}
  # With one object per clip, their mean is what summarize reports.
  mixed = videos[:3] + [v[::-1] for v in videos[3:]]
  summary = oc.summarize(mixed, captions)
  means = {k: np.mean([oc.clip_scores(v, c)[k] for v, c in zip(mixed, captions)])
           for k in ("objects_present", "objects_moving", "clip_correct")}
  assert summary["objects_moving"] == means["objects_moving"] == 0.5
  assert summary["clips_correct"] == means["clip_correct"]


def test_a_static_frame_does_not_move_as_captioned():
  clip = next(c for c in _clips(60) if c.scene.objects[0].motion.describe() == "falling under gravity")
  frozen = np.repeat(clip.video[:1], T, axis=0)
  (verdict,) = oc.check_clip(frozen, clip.caption)
  assert verdict.present and not verdict.moves_as_captioned
