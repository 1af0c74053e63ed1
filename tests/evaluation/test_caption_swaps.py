"""videojam_jax/evaluation/caption_swaps.py: one kind of caption word swapped."""

import dataclasses

import pytest

from data_pipelines import synthetic_physics as physics
from videojam_jax.evaluation import caption_swaps
from videojam_jax.evaluation import object_check

CAPTION = ("a red circle moving left, an orange square rotating clockwise while moving "
           "up-right and a blue triangle falling under gravity, on a striped background")


def test_each_swap_changes_only_its_kind_of_word():
  # Colours: the next in the palette (red, green, blue, yellow, cyan, magenta, orange,
  # purple, white) that no object of the caption has yet.
  assert caption_swaps.swap_colours(CAPTION) == (
      "a green circle moving left, a purple square rotating clockwise while moving "
      "up-right and a yellow triangle falling under gravity, on a striped background")
  assert caption_swaps.swap_shapes(CAPTION) == (
      "a red square moving left, an orange triangle rotating clockwise while moving "
      "up-right and a blue circle falling under gravity, on a striped background")
  assert caption_swaps.swap_directions(CAPTION) == (
      "a red circle moving right, an orange square rotating clockwise while moving "
      "down-left and a blue triangle falling under gravity, on a striped background")
  assert caption_swaps.swap_spins(CAPTION) == CAPTION.replace("clockwise", "counterclockwise")


@pytest.mark.parametrize("seed", range(30))
def test_swapped_captions_keep_the_grammar(seed):
  caption = physics.render_clip(seed, 2, 16, 16, 3).caption
  before = object_check.parse_caption(caption)
  for kind, swap in caption_swaps.SWAPS.items():
    after = object_check.parse_caption(swap(caption))
    assert len(after) == len(before)
    for old, new in zip(before, after):
      field = {"colour": "colour", "shape": "shape", "direction": "direction",
               "spin": None}[kind]
      if field is None:
        assert dataclasses.replace(new) == old     # spin is not a parsed field
        continue
      if getattr(old, field) is None:
        assert new == old
      else:
        assert getattr(new, field) != getattr(old, field)
        assert dataclasses.replace(new, **{field: getattr(old, field)}) == old
    if kind == "colour":   # still distinct colours, as the renderer draws them
      assert len({o.colour for o in after}) == len(after)


def test_opposite_directions_are_opposite():
  for i, direction in enumerate(physics.DIRECTIONS):
    swapped = caption_swaps.swap_directions(f"a red circle moving {direction}, on a x background")
    assert swapped.split()[4].rstrip(",") == physics.DIRECTIONS[(i + 4) % 8]
