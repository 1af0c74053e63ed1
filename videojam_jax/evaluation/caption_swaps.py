"""One kind of word of a synthetic caption replaced by another of its kind.

The captions of `data_pipelines/synthetic_physics.py` name each object's colour, shape
and motion, e.g. "a red circle moving left and a blue square falling under gravity, on a
striped background". A swap changes every word of one kind and nothing else:

  colour     each object's colour -> the next palette colour no object of the caption has
  shape      circle -> square -> triangle -> circle
  direction  each compass word of a translation -> its opposite (left <-> right, ...)
  spin       clockwise <-> counterclockwise

The caption_swap evaluator compares a model's held-out loss under the true and the
swapped captions. A model that ignores a kind of word scores the same under both.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from data_pipelines import synthetic_physics as physics

_COLOURS = list(physics.COLOURS)
_SHAPES = list(physics.SHAPE_SCALE)
_OPPOSITE = {d: physics.DIRECTIONS[(i + 4) % 8] for i, d in enumerate(physics.DIRECTIONS)}
_DIRECTION = "|".join(sorted(physics.DIRECTIONS, key=len, reverse=True))
_OBJECT_START = re.compile(rf"\b(an?) ({'|'.join(_COLOURS)}) ({'|'.join(_SHAPES)})\b")
_MOVING = re.compile(rf"\bmoving ({_DIRECTION})\b")
_SPIN = re.compile(r"\b(clockwise|counterclockwise)\b")


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def swap_colours(caption: str) -> str:
  """Every object's colour -> the next palette colour not already in the caption."""
  used = {m.group(2) for m in _OBJECT_START.finditer(caption)}
  taken = set(used)

  def replace(match: re.Match) -> str:
    i = _COLOURS.index(match.group(2))
    for step in range(1, len(_COLOURS)):
      colour = _COLOURS[(i + step) % len(_COLOURS)]
      if colour not in taken:
        taken.add(colour)
        return f"{_article(colour)} {colour} {match.group(3)}"
    return match.group(0)   # every colour in use (more objects than the palette)

  return _OBJECT_START.sub(replace, caption)


def swap_shapes(caption: str) -> str:
  """circle -> square -> triangle -> circle, for every object."""
  def replace(match: re.Match) -> str:
    shape = _SHAPES[(_SHAPES.index(match.group(3)) + 1) % len(_SHAPES)]
    return f"{match.group(1)} {match.group(2)} {shape}"
  return _OBJECT_START.sub(replace, caption)


def swap_directions(caption: str) -> str:
  """Every "moving <dir>" (also a rotating object's drift) -> the opposite direction."""
  return _MOVING.sub(lambda m: f"moving {_OPPOSITE[m.group(1)]}", caption)


def swap_spins(caption: str) -> str:
  """clockwise <-> counterclockwise."""
  return _SPIN.sub(lambda m: "counterclockwise" if m.group(1) == "clockwise" else "clockwise",
                   caption)


SWAPS: dict[str, Callable[[str], str]] = {
    "colour": swap_colours, "shape": swap_shapes, "direction": swap_directions,
    "spin": swap_spins}
