"""Does a generated clip show the captioned objects, moving as captioned? (synthetic scenes)

An object-level check for clips of the synthetic physics scenes
(`data_pipelines/synthetic_physics.py`), whose captions follow one grammar:
"a red circle moving up-left and a blue square falling under gravity, on a striped
background". Per captioned object it finds the pixels of that object's colour and
tracks the centroid of its largest blob:

  present:  one connected blob of the colour covers between MIN_AREA_FRACTION and
            MAX_AREA_FRACTION of the frame in at least MIN_PRESENT_FRAMES of the
            frames (scattered pixels of noise, or a colour wash, are no object);
  moving:   the motion the caption names, judged from the centroid path:
              "moving <dir>" (also "rotating ... while moving <dir>"): the net
                displacement is at least MIN_TRAVEL_PX and points within
                DIRECTION_TOLERANCE_DEG of <dir>;
              "falling under gravity": it travels, mostly vertically;
              "bouncing off the walls": it travels;
              "rotating <spin>" alone: it stays within MAX_STILL_DRIFT_PX.

Object pixels are told from the background by brightness: the palette is bright
(HSV value >= 0.64 even in a stripe's shade) and the backgrounds are muted (value
<= 0.5); a bright pixel takes the nearest palette colour. The thresholds are part of
the measurement's definition, not knobs: `tests/evaluation/test_object_check.py`
checks that rendered ground-truth clips pass and noise, wrong colours and wrong
directions fail.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import cv2
import numpy as np

from data_pipelines import synthetic_physics as physics

OBJECT_MIN_VALUE = 0.57          # HSV value: object pixels above, backgrounds (<= 0.5) below
MIN_AREA_FRACTION = 0.015        # ~15 px of 32x32: the smallest object is ~40 px
MAX_AREA_FRACTION = 0.35         # the largest object covers ~26% of the frame
MIN_PRESENT_FRAMES = 0.75        # of the clip's frames
MIN_TRAVEL_PX_PER_FRAME = 0.5    # slowest captioned translation: 0.6 px/frame at 32 px
DIRECTION_TOLERANCE_DEG = 45.0   # the caption's compass word spans +-22.5 deg
MAX_STILL_DRIFT_FRACTION = 0.1   # of min(H, W): a pure rotation's centroid wobble
VERTICAL_DOMINANCE = 1.0         # falling: vertical path >= this x horizontal path

DIRECTION_ANGLES = {name: 45.0 * i for i, name in enumerate(physics.DIRECTIONS)}
_COLOURS = "|".join(physics.COLOURS)
_SHAPES = "|".join(physics.SHAPE_SCALE)
_DIRECTION = "|".join(sorted(physics.DIRECTIONS, key=len, reverse=True))
_OBJECT = re.compile(
    rf"an? (?P<colour>{_COLOURS}) (?P<shape>{_SHAPES}) (?P<motion>"
    rf"moving (?P<direction>{_DIRECTION})"
    rf"|bouncing off the walls|falling under gravity"
    rf"|rotating (?P<spin>clockwise|counterclockwise)(?: while moving (?P<drift>{_DIRECTION}))?)")


class CaptionGrammarError(ValueError):
  """The caption is not one of the synthetic scenes' (the check cannot read it)."""


@dataclasses.dataclass(frozen=True)
class CaptionedObject:
  """One object as a caption describes it."""
  colour: str
  shape: str
  kind: str                 # linear | bouncing | falling | rotating
  direction: str | None     # compass word of a translation, if the caption names one


def parse_caption(caption: str) -> list[CaptionedObject]:
  """The objects a synthetic-scene caption names, in caption order."""
  scene, sep, _ = caption.rpartition(", on a ")
  if not sep:
    raise CaptionGrammarError(f"not a synthetic-scene caption (no ', on a ... background'): "
                              f"{caption!r}")
  objects, pos = [], 0
  for match in _OBJECT.finditer(scene):
    if scene[pos:match.start()] not in ("", ", ", " and "):
      break
    motion = match["motion"]
    kind = ("linear" if motion.startswith("moving") else "bouncing" if motion.startswith("bouncing")
            else "falling" if motion.startswith("falling") else "rotating")
    objects.append(CaptionedObject(match["colour"], match["shape"], kind,
                                   match["direction"] or match["drift"]))
    pos = match.end()
  if not objects or pos != len(scene):
    raise CaptionGrammarError(f"not a synthetic-scene caption: {caption!r}")
  return objects


def colour_labels(video: np.ndarray) -> np.ndarray:
  """uint8 [T, H, W, 3] -> int [T, H, W]: the index in physics.COLOURS of each bright
  pixel's nearest palette colour (by chromaticity), -1 for background pixels."""
  rgb = video.astype(np.float32) / 255.0
  value = rgb.max(axis=-1)
  palette = np.asarray(list(physics.COLOURS.values()), np.float32)
  # Compare colours up to brightness (stripes shade the colour by up to 35%).
  unit = lambda c: c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-6)
  distance = np.linalg.norm(unit(rgb)[..., None, :] - unit(palette), axis=-1)
  labels = np.argmin(distance, axis=-1)
  return np.where(value >= OBJECT_MIN_VALUE, labels, -1)


@dataclasses.dataclass(frozen=True)
class ObjectVerdict:
  """What the check found for one captioned object."""
  object: CaptionedObject
  present: bool
  moves_as_captioned: bool
  detail: str


def largest_blob(mask: np.ndarray) -> tuple[int, float, float]:
  """(area, centroid x, centroid y) of the largest 8-connected component of a [H, W]
  bool mask; (0, nan, nan) when it is empty."""
  count, _, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                                connectivity=8)
  if count < 2:  # label 0 is the background
    return 0, float("nan"), float("nan")
  best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
  return int(stats[best, cv2.CC_STAT_AREA]), float(centroids[best, 0]), float(centroids[best, 1])


def _angle_between(a_deg: float, b_deg: float) -> float:
  return abs((a_deg - b_deg + 180.0) % 360.0 - 180.0)


def check_object(labels: np.ndarray, obj: CaptionedObject) -> ObjectVerdict:
  """The verdict for one object, from the colour labels [T, H, W] of its clip."""
  _, h, w = labels.shape
  blobs = [largest_blob(frame == list(physics.COLOURS).index(obj.colour)) for frame in labels]
  area = np.array([b[0] for b in blobs])
  seen = (area >= MIN_AREA_FRACTION * h * w) & (area <= MAX_AREA_FRACTION * h * w)
  present = bool(seen.mean() >= MIN_PRESENT_FRAMES)
  if not present:
    return ObjectVerdict(obj, False, False, f"no {obj.colour} blob of object size "
                                            f"(largest per frame: {area.tolist()} px)")
  frames = np.flatnonzero(seen)
  cx = np.array([blobs[k][1] for k in frames])
  cy = np.array([blobs[k][2] for k in frames])
  span = max(int(frames[-1] - frames[0]), 1)
  net = np.array([cx[-1] - cx[0], cy[-1] - cy[0]])
  steps = np.abs(np.diff(np.stack([cx, cy], axis=1), axis=0)).sum(axis=0)  # |dx|, |dy| path
  travels = float(steps.sum()) >= MIN_TRAVEL_PX_PER_FRAME * span
  if obj.direction is not None:
    angle = float(np.degrees(np.arctan2(net[1], net[0])))  # y down, as the captions
    off = _angle_between(angle, DIRECTION_ANGLES[obj.direction])
    ok = bool(np.hypot(*net) >= MIN_TRAVEL_PX_PER_FRAME * span and off <= DIRECTION_TOLERANCE_DEG)
    detail = f"net ({net[0]:+.1f}, {net[1]:+.1f}) px, {off:.0f} deg off {obj.direction}"
  elif obj.kind == "falling":
    ok = travels and bool(steps[1] >= VERTICAL_DOMINANCE * steps[0])
    detail = f"path |dx| {steps[0]:.1f}, |dy| {steps[1]:.1f} px"
  elif obj.kind == "bouncing":
    ok = travels
    detail = f"path {steps.sum():.1f} px"
  else:  # rotating in place
    drift = float(np.hypot(*net))
    ok = drift <= MAX_STILL_DRIFT_FRACTION * min(h, w)
    detail = f"drift {drift:.1f} px"
  return ObjectVerdict(obj, True, ok, detail)


def check_clip(video: np.ndarray, caption: str) -> list[ObjectVerdict]:
  """Verdicts for every object `caption` names, in uint8 video [T, H, W, 3]."""
  labels = colour_labels(video)
  return [check_object(labels, obj) for obj in parse_caption(caption)]


def clip_scores(video: np.ndarray, caption: str) -> dict[str, float]:
  """One clip's fractions of captioned objects present and moving as captioned, and
  clip_correct (1.0 when every object is both): per-clip values to average or resample."""
  verdicts = check_clip(video, caption)
  return {"objects_present": float(np.mean([v.present for v in verdicts])),
          "objects_moving": float(np.mean([v.moves_as_captioned for v in verdicts])),
          "clip_correct": float(all(v.moves_as_captioned for v in verdicts))}


def summarize(videos: Sequence[np.ndarray], captions: Sequence[str]) -> dict[str, float]:
  """Fractions over clips: objects_present (of all captioned objects), objects_moving
  (present and moving as captioned, of all objects), clips_correct (clips whose every
  object is both)."""
  verdicts = [check_clip(v, c) for v, c in zip(videos, captions, strict=True)]
  flat = [v for clip in verdicts for v in clip]
  return {
      "objects_present": float(np.mean([v.present for v in flat])),
      "objects_moving": float(np.mean([v.moves_as_captioned for v in flat])),
      "clips_correct": float(np.mean([all(v.moves_as_captioned for v in c) for c in verdicts])),
  }
