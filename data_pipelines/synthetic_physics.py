"""Synthetic physics clips with exact optical flow: the quickstart's training data.

A clip is a static textured background with 1..N rigid, striped objects in front of
it, each with one kind of motion: constant velocity, bouncing off the walls
(elastic reflection), falling under gravity (elastic floor bounce) or rotating about
its centre (possibly while translating). Objects have a depth order and occlude one
another.

Every object's pose (centre, angle) is an analytic function of continuous time, so
positions at frames k and k+1 are exact even when a bounce happens between them, and
the flow is exact too: the surface point seen at pixel p in frame k has object
coordinates q = R(-theta_k) (p - c_k); at frame k+1 it is at c_{k+1} + R(theta_{k+1}) q,
and the forward flow is that position minus p (a true rigid transform, no small-angle
approximation). The flow at a pixel is that of the front-most surface there; the
background is static (flow 0). Because object textures depend only on object
coordinates, frame k+1 sampled at p + flow(p) shows exactly the colour of frame k at
p wherever that point stays visible — which is what the tests check.

Geometry conventions: pixel (row i, column j) has its centre at (x=j, y=i); the image
covers [-0.5, W-0.5] x [-0.5, H-0.5] and its border is the walls. y points down, so
gravity is +y and a positive angular velocity turns clockwise on screen.

Everything is vectorised NumPy over [T, H, W]; an 8x32x32 clip takes a few
milliseconds. Sizes, speeds and accelerations are fractions of the frame size so the
same scenes look alike at any resolution.
"""

from __future__ import annotations

import colorsys
import dataclasses
from typing import Protocol, Sequence

import cv2
import numpy as np

from videojam_jax.data import motion_encoding

# --- Defaults and ranges. Lengths are fractions of min(H, W), times are in frames.
DEFAULT_MAX_OBJECTS = 3
RADIUS_RANGE = (0.13, 0.28)         # object size: ~4-9 px at 32 px
SPEED_RANGE = (0.05, 0.11)          # translation, per frame: ~1.6-3.5 px at 32 px
ROTATING_DRIFT_SPEED_RANGE = (0.02, 0.06)   # translation of a rotating object
ANGULAR_SPEED_RANGE = (0.15, 0.4)   # radians per frame, either sign
GRAVITY_RANGE = (0.015, 0.03)       # per frame^2 (of the frame height): 0.5-1 px at 32
FALL_HEIGHT_RANGE = (0.5, 1.0)      # peak height above the floor / free height
FALL_PHASE_RANGE = (-0.25, 1.0)     # time since the peak at frame 0 / fall time
FALLING_DRIFT_SPEED_RANGE = (0.0, 0.04)
MIN_PEAK_HEIGHT = 1e-3              # pixels: keeps a no-room fall well defined
ROTATING_TRANSLATES_PROB = 0.5      # how often a rotating object also drifts
MOTION_KINDS = ("linear", "bouncing", "falling", "rotating")
# Caption words for a screen direction (y down), by octant of
# atan2(vy, vx): 0 = right, 1 = down-right, ...
DIRECTIONS = ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")

# Shapes: name -> size of the outline relative to the object's radius r (circle: the
# radius; square: half the side; triangle: circumradius), chosen so the three look
# about equally big.
SHAPE_SCALE = {"circle": 1.0, "square": 0.9, "triangle": 1.25}

# Object colours: saturated and bright, so that they stand out from the muted
# backgrounds and their names in captions are unambiguous.
COLOURS = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.15, 0.35, 0.98),
    "yellow": (0.98, 0.90, 0.10),
    "cyan": (0.10, 0.90, 0.92),
    "magenta": (0.95, 0.15, 0.85),
    "orange": (1.00, 0.55, 0.05),
    "purple": (0.60, 0.25, 0.95),
    "white": (0.97, 0.97, 0.97),
}
# Object texture: smooth (cosine) stripes in object coordinates, so rotation is
# visible and the colour varies smoothly enough to interpolate between pixels.
STRIPE_DEPTH = 0.35                 # darkest stripe = (1 - depth) * colour
STRIPE_PERIOD = 1.8                 # stripe period / object radius
ANTIALIAS_WIDTH = 1.0               # pixels over which an edge fades in

# Backgrounds: two muted colours (HSV value and saturation ranges) in a pattern.
BACKGROUND_KINDS = ("checkered", "striped", "mottled")  # mottled: smooth noise
BACKGROUND_VALUE_RANGE = (0.12, 0.5)
BACKGROUND_SATURATION_RANGE = (0.0, 0.45)
BACKGROUND_MIN_CONTRAST = 0.12      # min difference of the two colours' values
CHECKER_CELL_RANGE = (0.12, 0.25)   # cell side / frame size
STRIPE_BG_PERIOD_RANGE = (0.15, 0.35)
NOISE_GRID_RANGE = (3, 7)           # noise control points per side (bicubic upsampled)


# ----------------------------------------------------------------------------------
# Motions: analytic poses (cx, cy, theta) at any (float) frame time.

Pose = tuple[np.ndarray, np.ndarray, np.ndarray]  # centre x, centre y, angle


class Motion(Protocol):
  """Pose of an object as a function of time (frames)."""

  def pose(self, t: np.ndarray) -> Pose:
    """Returns (cx, cy, theta) arrays shaped like t."""

  def describe(self) -> str:
    """A caption phrase, e.g. 'bouncing off the walls'."""


def reflect(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """Unfolded coordinate u -> position in [lo, hi] with elastic wall reflections.

  A point moving at constant velocity between two walls traces a triangle wave;
  this is its closed form, exact at any time (bounces between frames included).
  """
  length = hi - lo
  if length <= 0:  # no room to move: sit in the middle
    return np.full_like(np.asarray(u, np.float64), 0.5 * (lo + hi))
  m = np.mod(np.asarray(u, np.float64) - lo, 2 * length)
  return lo + length - np.abs(m - length)


def _direction_name(vx: float, vy: float) -> str:
  """Screen direction of a velocity (y down) in one of 8 compass words."""
  octant = int(np.round(np.arctan2(vy, vx) / (np.pi / 4))) % 8
  return DIRECTIONS[octant]


def _spin_name(omega: float) -> str:
  return "clockwise" if omega > 0 else "counterclockwise"  # y points down


@dataclasses.dataclass(frozen=True)
class LinearMotion:
  """Constant velocity (and a fixed angle)."""
  x0: float
  y0: float
  vx: float
  vy: float
  theta0: float = 0.0

  def pose(self, t: np.ndarray) -> Pose:
    t = np.asarray(t, np.float64)
    return self.x0 + self.vx * t, self.y0 + self.vy * t, np.full_like(t, self.theta0)

  def describe(self) -> str:
    return f"moving {_direction_name(self.vx, self.vy)}"


@dataclasses.dataclass(frozen=True)
class BouncingMotion:
  """Constant speed inside a box [x_lo, x_hi] x [y_lo, y_hi] of centre positions,
  reflecting elastically off its sides (the walls, less the object's extent)."""
  x0: float
  y0: float
  vx: float
  vy: float
  x_lo: float
  x_hi: float
  y_lo: float
  y_hi: float
  theta0: float = 0.0

  def pose(self, t: np.ndarray) -> Pose:
    t = np.asarray(t, np.float64)
    return (reflect(self.x0 + self.vx * t, self.x_lo, self.x_hi),
            reflect(self.y0 + self.vy * t, self.y_lo, self.y_hi),
            np.full_like(t, self.theta0))

  def describe(self) -> str:
    return "bouncing off the walls"


@dataclasses.dataclass(frozen=True)
class FallingMotion:
  """Free fall with gravity g (+y) and an elastic bounce on the floor.

  The centre touches the floor at y = y_floor and peaks `peak_height` above it. With
  s the time since the last peak, folded into [-t_fall, t_fall), the height above
  the floor is peak_height - g s^2 / 2 and the vertical velocity is g s: it grows
  while falling and flips sign at each bounce. Horizontally the object drifts at
  vx, reflecting off the side walls.
  """
  x0: float
  vx: float
  x_lo: float
  x_hi: float
  y_floor: float
  peak_height: float
  gravity: float
  phase: float      # time since the peak at t = 0
  theta0: float = 0.0

  @property
  def fall_time(self) -> float:
    """Time from the peak to the floor."""
    return float(np.sqrt(2.0 * self.peak_height / self.gravity))

  def time_since_peak(self, t: np.ndarray) -> np.ndarray:
    t_fall = self.fall_time
    return np.mod(np.asarray(t, np.float64) + self.phase + t_fall, 2 * t_fall) - t_fall

  def pose(self, t: np.ndarray) -> Pose:
    t = np.asarray(t, np.float64)
    s = self.time_since_peak(t)
    y = self.y_floor - (self.peak_height - 0.5 * self.gravity * s**2)
    return reflect(self.x0 + self.vx * t, self.x_lo, self.x_hi), y, np.full_like(t, self.theta0)

  def vertical_velocity(self, t: np.ndarray) -> np.ndarray:
    """dy/dt (pixels per frame, + is down), for tests and analysis."""
    return self.gravity * self.time_since_peak(t)

  def describe(self) -> str:
    return "falling under gravity"


@dataclasses.dataclass(frozen=True)
class RotatingMotion:
  """Rotation about the centre at angular velocity omega, plus constant drift."""
  x0: float
  y0: float
  omega: float
  theta0: float = 0.0
  vx: float = 0.0
  vy: float = 0.0

  def pose(self, t: np.ndarray) -> Pose:
    t = np.asarray(t, np.float64)
    return self.x0 + self.vx * t, self.y0 + self.vy * t, self.theta0 + self.omega * t

  def describe(self) -> str:
    phrase = f"rotating {_spin_name(self.omega)}"
    if self.vx or self.vy:
      phrase += f" while moving {_direction_name(self.vx, self.vy)}"
    return phrase


# ----------------------------------------------------------------------------------
# Shapes.

def _polygon_vertices(shape: str, size: float) -> np.ndarray | None:
  """Vertices [N, 2] in object coordinates (None for a circle)."""
  if shape == "circle":
    return None
  if shape == "square":
    return size * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
  if shape == "triangle":  # equilateral, pointing up (-y) at theta = 0
    angles = np.deg2rad([-90.0, 30.0, 150.0])
    return size * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
  raise ValueError(f"unknown shape {shape!r}; known: {sorted(SHAPE_SCALE)}")


def _polygon_sdf(qx: np.ndarray, qy: np.ndarray, vertices: np.ndarray) -> np.ndarray:
  """Exact signed distance to a convex polygon (negative inside)."""
  dist = np.full(qx.shape, np.inf)
  inside = np.ones(qx.shape, bool)
  n = len(vertices)
  orientation = np.sign(_cross(vertices[1] - vertices[0], vertices[2] - vertices[1]))
  for i in range(n):
    a, b = vertices[i], vertices[(i + 1) % n]
    ex, ey = b - a
    px, py = qx - a[0], qy - a[1]
    h = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    dist = np.minimum(dist, np.hypot(px - h * ex, py - h * ey))
    inside &= orientation * (ex * py - ey * px) >= 0
  return np.where(inside, -dist, dist)


def _cross(a: np.ndarray, b: np.ndarray) -> float:
  return float(a[0] * b[1] - a[1] * b[0])


def _half_extent(shape: str, size: float, theta: float) -> tuple[float, float]:
  """Half width and height of a shape's outline turned by theta."""
  vertices = _polygon_vertices(shape, size)
  if vertices is None:
    return size, size
  c, s = np.cos(theta), np.sin(theta)
  x = c * vertices[:, 0] - s * vertices[:, 1]
  y = s * vertices[:, 0] + c * vertices[:, 1]
  return float(np.max(np.abs(x))), float(np.max(np.abs(y)))


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One rigid, striped object: its outline, colour, texture and motion."""
  shape: str            # circle | square | triangle
  colour: str           # a key of COLOURS
  radius: float         # pixels; the outline is radius * SHAPE_SCALE[shape]
  motion: Motion
  stripe_period: float  # pixels
  stripe_phase: float   # radians

  @property
  def size(self) -> float:
    return self.radius * SHAPE_SCALE[self.shape]

  def sdf(self, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) at object coordinates (qx, qy)."""
    vertices = _polygon_vertices(self.shape, self.size)
    if vertices is None:
      return np.hypot(qx, qy) - self.size
    return _polygon_sdf(qx, qy, vertices)

  def texture(self, qx: np.ndarray) -> np.ndarray:
    """RGB [..., 3] at object coordinates: smooth stripes across the object's x axis."""
    wave = 0.5 * (1.0 - np.cos(2 * np.pi * qx / self.stripe_period + self.stripe_phase))
    shade = 1.0 - STRIPE_DEPTH * wave
    return shade[..., None] * np.asarray(COLOURS[self.colour])

  def half_extent(self, theta: float) -> tuple[float, float]:
    """Half width and height of the outline at a fixed angle."""
    return _half_extent(self.shape, self.size, theta)

  def describe(self) -> str:
    article = "an" if self.colour[0] in "aeiou" else "a"
    return f"{article} {self.colour} {self.shape} {self.motion.describe()}"


@dataclasses.dataclass(frozen=True)
class Scene:
  """A static background and objects listed back to front."""
  background: np.ndarray             # float [H, W, 3] in [0, 1]
  background_kind: str               # one of BACKGROUND_KINDS
  objects: tuple[SceneObject, ...]

  @property
  def caption(self) -> str:
    phrases = [o.describe() for o in self.objects]
    if not phrases:
      return f"a {self.background_kind} background"
    if len(phrases) > 1:
      phrases = [", ".join(phrases[:-1]) + " and " + phrases[-1]]
    return f"{phrases[0]}, on a {self.background_kind} background"


@dataclasses.dataclass(frozen=True)
class SyntheticClip:
  """A rendered clip.

  video:        uint8 [T, H, W, 3]
  flow:         float32 [T-1, H, W, 2], exact forward flow (dx, dy) in pixels from
                frame k to k+1 of the surface visible at each pixel of frame k
  caption:      what the clip shows
  segmentation: uint8 [T, H, W], 0 for background, i for scene.objects[i-1] (the
                front-most object whose outline covers the pixel centre)
  scene:        the scene that was rendered (analytic poses for tests)
  """
  video: np.ndarray
  flow: np.ndarray
  caption: str
  segmentation: np.ndarray
  scene: Scene


# ----------------------------------------------------------------------------------
# Rendering.

def render_scene(scene: Scene, num_frames: int) -> SyntheticClip:
  """Renders frames 0..num_frames-1 of `scene` with its exact forward flow."""
  if num_frames < 2:
    raise ValueError(f"need at least 2 frames for flow, got {num_frames}")
  height, width = scene.background.shape[:2]
  if len(scene.objects) > np.iinfo(np.uint8).max:
    raise ValueError("at most 255 objects fit the uint8 segmentation")
  t = np.arange(num_frames, dtype=np.float64)
  xs = np.arange(width, dtype=np.float64)[None, None, :]
  ys = np.arange(height, dtype=np.float64)[None, :, None]

  image = np.broadcast_to(scene.background, (num_frames, height, width, 3)).copy()
  flow = np.zeros((num_frames - 1, height, width, 2), np.float64)
  segmentation = np.zeros((num_frames, height, width), np.uint8)
  for index, obj in enumerate(scene.objects, start=1):  # back to front
    cx, cy, theta = (a[:, None, None] for a in obj.motion.pose(t))
    cos, sin = np.cos(theta), np.sin(theta)
    # Object coordinates of every pixel centre: q = R(-theta) (p - c).
    dx, dy = xs - cx, ys - cy
    qx = cos * dx + sin * dy
    qy = -sin * dx + cos * dy
    sdf = obj.sdf(qx, qy)
    covered = sdf < 0
    alpha = np.clip(0.5 - sdf / ANTIALIAS_WIDTH, 0.0, 1.0)[..., None]
    image = (1.0 - alpha) * image + alpha * obj.texture(qx)
    segmentation[covered] = index
    # Where each frame-k point is at frame k+1: p' = c_{k+1} + R(theta_{k+1}) q_k.
    qx0, qy0 = qx[:-1], qy[:-1]
    x1 = cx[1:] + cos[1:] * qx0 - sin[1:] * qy0
    y1 = cy[1:] + sin[1:] * qx0 + cos[1:] * qy0
    obj_flow = np.stack([x1 - xs, y1 - ys], axis=-1)
    flow = np.where(covered[:-1, ..., None], obj_flow, flow)
  return SyntheticClip(
      video=motion_encoding.to_uint8(image), flow=flow.astype(np.float32),
      caption=scene.caption, segmentation=segmentation, scene=scene)


def render_clip(rng_or_seed: np.random.Generator | int | np.random.SeedSequence,
                num_frames: int, height: int, width: int,
                max_objects: int = DEFAULT_MAX_OBJECTS,
                background_kinds: Sequence[str] = BACKGROUND_KINDS,
                motion_kinds: Sequence[str] = MOTION_KINDS) -> SyntheticClip:
  """Samples a random scene (deterministic by seed) and renders it.

  Args:
    rng_or_seed: a numpy Generator, or a seed / SeedSequence for one.
    num_frames, height, width: clip size (T >= 2).
    max_objects: scenes hold 1..max_objects objects (distinct colours).
    background_kinds: the backgrounds drawn from (a subset of BACKGROUND_KINDS).
    motion_kinds: the motions drawn from, uniformly (a subset of MOTION_KINDS).
  Returns:
    A SyntheticClip with uint8 video [T,H,W,3], exact float32 flow [T-1,H,W,2] and a
    caption naming each object and its motion.
  """
  rng = (rng_or_seed if isinstance(rng_or_seed, np.random.Generator)
         else np.random.default_rng(rng_or_seed))
  scene = sample_scene(rng, num_frames, height, width, max_objects,
                       motion_kinds=motion_kinds, background_kinds=background_kinds)
  return render_scene(scene, num_frames)


# ----------------------------------------------------------------------------------
# Sampling random scenes.

def sample_scene(rng: np.random.Generator, num_frames: int, height: int, width: int,
                 max_objects: int = DEFAULT_MAX_OBJECTS,
                 motion_kinds: Sequence[str] = MOTION_KINDS,
                 background_kinds: Sequence[str] = BACKGROUND_KINDS) -> Scene:
  """Draws a background (one of `background_kinds`) and 1..max_objects objects with
  random shapes and motions."""
  if max_objects < 1 or max_objects > len(COLOURS):
    raise ValueError(f"max_objects must be in [1, {len(COLOURS)}], got {max_objects}")
  check_background_kinds(background_kinds)
  check_motion_kinds(motion_kinds)
  kind = str(rng.choice(list(background_kinds)))
  background = sample_background(rng, kind, height, width)
  num_objects = int(rng.integers(1, max_objects + 1))
  colours = rng.choice(list(COLOURS), size=num_objects, replace=False)
  objects = tuple(
      sample_object(rng, str(colour), str(rng.choice(motion_kinds)), num_frames,
                    height, width)
      for colour in colours)
  return Scene(background=background, background_kind=kind, objects=objects)


def check_motion_kinds(kinds: Sequence[str]) -> None:
  """Raises ValueError unless `kinds` is a non-empty set of known motions."""
  unknown = sorted(set(kinds) - set(MOTION_KINDS))
  if not kinds or unknown or len(set(kinds)) != len(kinds):
    raise ValueError(f"motion kinds must be distinct names from {MOTION_KINDS}, "
                     f"got {tuple(kinds)}")


def check_background_kinds(kinds: Sequence[str]) -> None:
  """Raises ValueError unless `kinds` is a non-empty set of known backgrounds."""
  unknown = sorted(set(kinds) - set(BACKGROUND_KINDS))
  if not kinds or unknown or len(set(kinds)) != len(kinds):
    raise ValueError(f"background kinds must be distinct names from {BACKGROUND_KINDS}, "
                     f"got {tuple(kinds)}")


def sample_object(rng: np.random.Generator, colour: str, motion_kind: str,
                  num_frames: int, height: int, width: int) -> SceneObject:
  """A random shape of the given colour with a random motion of the given kind."""
  scale = min(height, width)
  shape = str(rng.choice(list(SHAPE_SCALE)))
  radius = float(rng.uniform(*RADIUS_RANGE)) * scale
  theta0 = float(rng.uniform(0, 2 * np.pi))
  stripe_phase = float(rng.uniform(0, 2 * np.pi))
  size = radius * SHAPE_SCALE[shape]
  if motion_kind == "rotating":
    extent = (size, size)  # any angle must fit: the circumradius
  else:
    extent = _half_extent(shape, size, theta0)
  # Centre positions that keep the whole outline inside the frame.
  x_lo, x_hi = -0.5 + extent[0], width - 0.5 - extent[0]
  y_lo, y_hi = -0.5 + extent[1], height - 0.5 - extent[1]

  def velocity(speed_range):
    speed = float(rng.uniform(*speed_range)) * scale
    angle = float(rng.uniform(0, 2 * np.pi))
    return speed * np.cos(angle), speed * np.sin(angle)

  if motion_kind == "linear":
    motion = _linear_path(rng, velocity(SPEED_RANGE), (x_lo, x_hi), (y_lo, y_hi),
                          num_frames, theta0)
  elif motion_kind == "bouncing":
    vx, vy = velocity(SPEED_RANGE)
    motion = BouncingMotion(
        x0=float(rng.uniform(x_lo, x_hi)), y0=float(rng.uniform(y_lo, y_hi)),
        vx=vx, vy=vy, x_lo=x_lo, x_hi=x_hi, y_lo=y_lo, y_hi=y_hi, theta0=theta0)
  elif motion_kind == "falling":
    gravity = float(rng.uniform(*GRAVITY_RANGE)) * height
    peak = float(rng.uniform(*FALL_HEIGHT_RANGE)) * max(y_hi - y_lo, 0.0)
    peak = max(peak, MIN_PEAK_HEIGHT)  # a zero peak has zero fall time (0 / 0)
    fall_time = np.sqrt(2.0 * peak / gravity)
    vx = float(rng.uniform(*FALLING_DRIFT_SPEED_RANGE)) * scale * rng.choice([-1, 1])
    motion = FallingMotion(
        x0=float(rng.uniform(x_lo, x_hi)), vx=float(vx), x_lo=x_lo, x_hi=x_hi,
        y_floor=y_hi, peak_height=peak, gravity=gravity,
        phase=float(rng.uniform(*FALL_PHASE_RANGE)) * fall_time, theta0=theta0)
  elif motion_kind == "rotating":
    omega = float(rng.uniform(*ANGULAR_SPEED_RANGE)) * rng.choice([-1, 1])
    drift = (velocity(ROTATING_DRIFT_SPEED_RANGE)
             if rng.random() < ROTATING_TRANSLATES_PROB else (0.0, 0.0))
    path = _linear_path(rng, drift, (x_lo, x_hi), (y_lo, y_hi), num_frames, theta0)
    motion = RotatingMotion(x0=path.x0, y0=path.y0, omega=float(omega), theta0=theta0,
                            vx=path.vx, vy=path.vy)
  else:
    raise ValueError(f"unknown motion kind {motion_kind!r}; known: {MOTION_KINDS}")
  return SceneObject(shape=shape, colour=colour, radius=radius, motion=motion,
                     stripe_period=STRIPE_PERIOD * radius, stripe_phase=stripe_phase)


def _linear_path(rng: np.random.Generator, velocity: tuple[float, float],
                 x_range: tuple[float, float], y_range: tuple[float, float],
                 num_frames: int, theta0: float) -> LinearMotion:
  """A constant-velocity path that stays inside the ranges for frames 0..T-1.

  The velocity is scaled down if the clip is too long for it to fit.
  """
  vx, vy = velocity
  duration = num_frames - 1
  room = np.array([max(x_range[1] - x_range[0], 0.0), max(y_range[1] - y_range[0], 0.0)])
  travel = np.abs(np.array([vx, vy])) * duration
  with np.errstate(divide="ignore", invalid="ignore"):
    fit = np.min(np.where(travel > 0, room / travel, np.inf))
  if fit < 1.0:
    vx, vy = vx * fit, vy * fit
  x0 = _uniform_start(rng, x_range, vx * duration)
  y0 = _uniform_start(rng, y_range, vy * duration)
  return LinearMotion(x0, y0, float(vx), float(vy), theta0)


def _uniform_start(rng: np.random.Generator, value_range: tuple[float, float],
                   travel: float) -> float:
  """A start in value_range from which start + travel stays in value_range."""
  low = value_range[0] - min(travel, 0.0)
  high = value_range[1] - max(travel, 0.0)
  if high <= low:  # exactly fitted (or no room): rounding may invert the interval
    return 0.5 * (low + high)
  return float(rng.uniform(low, high))


def sample_background(rng: np.random.Generator, kind: str, height: int,
                      width: int) -> np.ndarray:
  """A static two-colour pattern, float [H, W, 3] in [0, 1]."""
  colour_a, colour_b = _background_colours(rng)
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  scale = min(height, width)
  if kind == "checkered":
    cell = float(rng.uniform(*CHECKER_CELL_RANGE)) * scale
    ox, oy = rng.uniform(0, cell, size=2)
    mix = ((np.floor((xs + ox) / cell) + np.floor((ys + oy) / cell)) % 2).astype(np.float64)
  elif kind == "striped":
    period = float(rng.uniform(*STRIPE_BG_PERIOD_RANGE)) * scale
    angle = float(rng.uniform(0, np.pi))
    u = xs * np.cos(angle) + ys * np.sin(angle) + rng.uniform(0, period)
    mix = (np.mod(u, period) < period / 2).astype(np.float64)
  elif kind == "mottled":
    grid = int(rng.integers(NOISE_GRID_RANGE[0], NOISE_GRID_RANGE[1] + 1))
    coarse = rng.random((grid, grid)).astype(np.float32)
    mix = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    mix = np.clip(mix.astype(np.float64), 0.0, 1.0)
  else:
    raise ValueError(f"unknown background {kind!r}; known: {sorted(BACKGROUND_KINDS)}")
  return (1.0 - mix[..., None]) * colour_a + mix[..., None] * colour_b


def _background_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Two muted colours whose brightness differs enough for the pattern to show."""
  lo, hi = BACKGROUND_VALUE_RANGE
  value_a = rng.uniform(lo, hi - BACKGROUND_MIN_CONTRAST)
  value_b = rng.uniform(value_a + BACKGROUND_MIN_CONTRAST, hi)
  colours = []
  for value in rng.permutation([value_a, value_b]):
    hue, sat = rng.uniform(0, 1), rng.uniform(*BACKGROUND_SATURATION_RANGE)
    colours.append(np.asarray(colorsys.hsv_to_rgb(hue, sat, value), np.float64))
  return colours[0], colours[1]
