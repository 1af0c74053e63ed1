"""Tests for data_pipelines/synthetic_physics.py: physics, exact flow, captions."""

import dataclasses

import cv2
import numpy as np
import pytest

from data_pipelines import synthetic_physics as sp
from videojam_jax.data import motion_encoding as me

T, H, W = 8, 32, 32
EDGE_MARGIN = 5  # pixels: neighbourhood (5x5) that must hold one surface only


def _plain_background(height=H, width=W, value=0.3):
  return np.full((height, width, 3), value)


def _object(shape, colour, radius, motion, period=14.0):
  return sp.SceneObject(shape=shape, colour=colour, radius=radius, motion=motion,
                        stripe_period=period, stripe_phase=0.3)


def _scene(*objects, height=H, width=W, kind="striped"):
  return sp.Scene(background=_plain_background(height, width), background_kind=kind,
                  objects=tuple(objects))


def _single_surface(seg):
  """Pixels whose EDGE_MARGIN x EDGE_MARGIN neighbourhood shows one surface only."""
  kernel = np.ones((EDGE_MARGIN, EDGE_MARGIN), np.uint8)
  return (cv2.dilate(seg, kernel) == seg) & (cv2.erode(seg, kernel) == seg)


def warp_errors(clip, flow=None):
  """Backward-warps frame k+1 by the flow of frame k and compares with frame k.

  Returns (errors, moving): per-pixel max-over-channels absolute errors in uint8
  levels, at pixels where the check is meaningful — the surface is the same at p in
  frame k and around p + flow(p) in frame k+1 (not occluded or disoccluded), and
  neither lies near an outline (anti-aliased edges mix two surfaces) — and whether
  each such pixel moves by more than half a pixel.
  """
  flow = clip.flow if flow is None else flow
  num_frames, height, width, _ = clip.video.shape
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  errors, moving = [], []
  for k in range(num_frames - 1):
    map_x, map_y = xs + flow[k, ..., 0], ys + flow[k, ..., 1]
    warped = cv2.remap(clip.video[k + 1].astype(np.float32), map_x, map_y,
                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    seg0, seg1 = clip.segmentation[k], clip.segmentation[k + 1]
    valid = _single_surface(seg0)
    same1 = _single_surface(seg1)
    for round_x in (np.floor, np.ceil):  # the 4 pixels bilinear sampling reads
      for round_y in (np.floor, np.ceil):
        ix, iy = round_x(map_x).astype(int), round_y(map_y).astype(int)
        inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
        ix, iy = np.clip(ix, 0, width - 1), np.clip(iy, 0, height - 1)
        valid &= inside & same1[iy, ix] & (seg1[iy, ix] == seg0)
    error = np.abs(warped - clip.video[k].astype(np.float32)).max(-1)
    errors.append(error[valid])
    moving.append(np.linalg.norm(flow[k], axis=-1)[valid] > 0.5)
  return np.concatenate(errors), np.concatenate(moving)


# --- Shapes, determinism, captions.

def test_shapes_and_dtypes_non_square():
  clip = sp.render_clip(0, 5, 24, 40, max_objects=4)
  assert clip.video.shape == (5, 24, 40, 3) and clip.video.dtype == np.uint8
  assert clip.flow.shape == (4, 24, 40, 2) and clip.flow.dtype == np.float32
  assert clip.segmentation.shape == (5, 24, 40)
  assert isinstance(clip.caption, str) and clip.caption
  assert 1 <= len(clip.scene.objects) <= 4
  assert np.all(np.isfinite(clip.flow))


def test_deterministic_by_seed():
  a = sp.render_clip(7, T, H, W, 3)
  b = sp.render_clip(np.random.default_rng(7), T, H, W, 3)
  np.testing.assert_array_equal(a.video, b.video)
  np.testing.assert_array_equal(a.flow, b.flow)
  assert a.caption == b.caption


def test_different_seeds_differ():
  clips = [sp.render_clip(seed, T, H, W, 3) for seed in range(12)]
  videos = {c.video.tobytes() for c in clips}
  assert len(videos) == len(clips)
  assert len({c.caption for c in clips}) > len(clips) // 2


def test_caption_names_objects_and_motions():
  scene = _scene(
      _object("circle", "red", 5, sp.BouncingMotion(10, 10, 2, 1, 4.5, 26.5, 4.5, 26.5)),
      _object("square", "blue", 5, sp.RotatingMotion(16, 16, omega=0.3)),
      _object("triangle", "orange", 5, sp.LinearMotion(10, 20, -2.0, 0.1)))
  assert sp.render_scene(scene, T).caption == (
      "a red circle bouncing off the walls, a blue square rotating clockwise and "
      "an orange triangle moving left, on a striped background")
  single = _scene(_object("square", "green", 5, sp.RotatingMotion(16, 16, -0.3, vx=0, vy=-1)),
                  kind="checkered")
  assert single.caption == ("a green square rotating counterclockwise while moving up, "
                            "on a checkered background")


@pytest.mark.parametrize("seed", range(20))
def test_random_captions_name_every_object(seed):
  clip = sp.render_clip(seed, T, H, W, 3)
  phrases = {sp.LinearMotion: "moving ", sp.BouncingMotion: "bouncing off the walls",
             sp.FallingMotion: "falling under gravity", sp.RotatingMotion: "rotating "}
  position = 0
  for obj in clip.scene.objects:  # named in depth order, each with its motion
    phrase = f"{obj.colour} {obj.shape} {phrases[type(obj.motion)]}"
    found = clip.caption.find(phrase, position)
    assert found >= 0, (phrase, clip.caption)
    position = found + len(phrase)
  assert clip.caption.endswith(f"on a {clip.scene.background_kind} background")
  colours = [o.colour for o in clip.scene.objects]
  assert len(set(colours)) == len(colours)


def test_objects_are_visible_and_moving():
  clip_point = me.DEFAULT_SIGMA * np.hypot(H, W)  # flow that encodes to full brightness
  for seed in range(30):
    clip = sp.render_clip(seed, T, H, W, 3)
    magnitude = np.linalg.norm(clip.flow, axis=-1)
    # A few pixels per frame: visible, and below the motion encoding's clip point.
    assert 0.5 < magnitude.max() < clip_point
    for index, obj in enumerate(clip.scene.objects, start=1):
      assert 3.5 <= obj.radius <= 10.0  # big enough to see at 32 px
      assert (clip.segmentation == index).any()


# --- Exact flow.

def test_backward_warp_reproduces_previous_frame():
  errors, moving = [], []
  for seed in range(40):
    e, m = warp_errors(sp.render_clip(seed, T, H, W, 3))
    errors.append(e)
    moving.append(m)
  errors, moving = np.concatenate(errors), np.concatenate(moving)
  moving_errors = errors[moving]
  assert moving_errors.size > 5_000  # the check covers lots of moving surface
  # Only bilinear interpolation of the smooth stripes and uint8 rounding remain.
  assert np.mean(moving_errors) < 1.0
  assert np.percentile(moving_errors, 99) <= 2.5
  assert moving_errors.max() <= 4.0


def test_backward_warp_detects_wrong_flow():
  """The check above has teeth: plausible wrong flows fail it."""
  clips = [sp.render_clip(seed, T, H, W, 3) for seed in range(10)]

  def p99(make_flow):
    errors, moving = zip(*(warp_errors(c, make_flow(c)) for c in clips))
    return np.percentile(np.concatenate(errors)[np.concatenate(moving)], 99)

  assert p99(lambda c: c.flow) <= 2.5
  assert p99(lambda c: 0.9 * c.flow) > 3.5          # slightly too short
  assert p99(lambda c: 0.8 * c.flow) > 8.0          # too short
  assert p99(lambda c: c.flow[..., ::-1]) > 8.0     # (dy, dx) instead of (dx, dy)
  shifted = lambda c: np.concatenate([c.flow[1:], c.flow[-1:]])  # one frame late
  assert p99(shifted) > 8.0
  # Rotation by a small-angle (linear) approximation instead of the rigid transform.
  clips = [c for c in (sp.render_clip(seed, T, H, W, 3) for seed in range(60))
           if any(isinstance(o.motion, sp.RotatingMotion) for o in c.scene.objects)]
  assert len(clips) >= 10
  assert p99(lambda c: c.flow) <= 2.5
  assert p99(_linearised_rotation_flow) > 3.5


def _linearised_rotation_flow(clip):
  """The clip's flow with rotating objects moved by p + v + dtheta * J (p - c)."""
  flow = clip.flow.copy()
  num_frames, height, width, _ = clip.video.shape
  ys, xs = np.mgrid[0:height, 0:width]
  for index, obj in enumerate(clip.scene.objects, start=1):
    if not isinstance(obj.motion, sp.RotatingMotion):
      continue
    cx, cy, theta = obj.motion.pose(np.arange(num_frames))
    for k in range(num_frames - 1):
      on = clip.segmentation[k] == index
      dtheta = theta[k + 1] - theta[k]
      flow[k, ..., 0][on] = (cx[k + 1] - cx[k] - dtheta * (ys - cy[k]))[on]
      flow[k, ..., 1][on] = (cy[k + 1] - cy[k] + dtheta * (xs - cx[k]))[on]
  return flow


def test_rotation_flow_is_exact_rigid_transform():
  omega, vx, vy = 0.4, 0.7, -0.4
  obj = _object("square", "red", 8.0, sp.RotatingMotion(15.0, 16.0, omega, 0.2, vx, vy))
  clip = sp.render_scene(_scene(obj), T)
  c, s = np.cos(omega), np.sin(omega)
  rotation = np.array([[c, -s], [s, c]])
  for k in range(T - 1):
    ys, xs = np.nonzero(clip.segmentation[k] == 1)
    p = np.stack([xs, ys], -1).astype(np.float64)
    q = p + clip.flow[k, ys, xs]
    # Fit q = A p + b; a rigid motion has A = R(omega) exactly (no shear, no scale).
    design = np.concatenate([p, np.ones((len(p), 1))], -1)
    solution, *_ = np.linalg.lstsq(design, q, rcond=None)
    a, b = solution[:2].T, solution[2]
    np.testing.assert_allclose(a, rotation, atol=1e-5)
    np.testing.assert_allclose(design @ solution, q, atol=1e-4)
    centre = np.array([15.0 + vx * k, 16.0 + vy * k])
    np.testing.assert_allclose(b, centre + [vx, vy] - rotation @ centre, atol=1e-4)
  # A first-order (linearised) rotation would be measurably different at the rim.
  linear = np.eye(2) + omega * np.array([[0, -1], [1, 0]])
  assert np.abs(linear - rotation).max() > 0.05
  # y points down: positive omega turns clockwise on screen, so the point right of
  # the centre moves down.
  assert clip.flow[0, 16, 21, 1] > 1.0 and "clockwise" in clip.caption


def test_front_object_owns_flow_and_colour_where_objects_overlap():
  back = _object("square", "blue", 8.0, sp.LinearMotion(14.0, 16.0, 2.0, 0.0))
  front = _object("circle", "red", 6.0, sp.LinearMotion(18.0, 16.0, 0.0, 1.5))
  clip = sp.render_scene(_scene(back, front), T)
  overlap = clip.segmentation[0] == 2
  assert overlap[16, 16] and overlap.sum() > 50
  np.testing.assert_allclose(clip.flow[0][overlap], [[0.0, 1.5]] * overlap.sum(), atol=1e-5)
  behind = clip.segmentation[0] == 1
  np.testing.assert_allclose(clip.flow[0][behind], [[2.0, 0.0]] * behind.sum(), atol=1e-5)
  red = clip.video[0][overlap & _single_surface(clip.segmentation[0])].astype(int)
  assert len(red) > 20 and np.all(red[:, 0] > red[:, 2] + 80)  # red in front, not blue
  assert np.all(clip.flow[0][clip.segmentation[0] == 0] == 0)  # static background


# --- Physics.

def test_bounce_between_frames_uses_true_positions():
  # Circle of radius 5: centre x stays in [4.5, 26.5]. From x=20 at 3.3 px/frame it
  # reaches 26.5 between frames 1 (23.3) and 2 (26.4 after reflecting 0.1).
  motion = sp.BouncingMotion(20.0, 16.0, 3.3, 0.0, 4.5, 26.5, 4.5, 26.5)
  clip = sp.render_scene(_scene(_object("circle", "red", 5.0, motion)), T)
  x = motion.pose(np.arange(T))[0]
  np.testing.assert_allclose(x[:4], [20.0, 23.3, 26.4, 23.1], atol=1e-9)
  for k in range(T - 1):
    on_object = clip.segmentation[k] == 1
    np.testing.assert_allclose(clip.flow[k][on_object][:, 0], x[k + 1] - x[k], atol=1e-5)
  assert abs(clip.flow[1][clip.segmentation[1] == 1][0, 0] - 3.1) < 1e-5


def test_bouncing_objects_stay_inside_the_frame():
  rng = np.random.default_rng(0)
  t = np.linspace(0, 200, 4001)
  for _ in range(50):
    obj = sp.sample_object(rng, "red", "bouncing", T, H, W)
    cx, cy, theta = obj.motion.pose(t)
    half_w, half_h = obj.half_extent(theta[0])
    assert cx.min() - half_w >= -0.5 - 1e-9 and cx.max() + half_w <= W - 0.5 + 1e-9
    assert cy.min() - half_h >= -0.5 - 1e-9 and cy.max() + half_h <= H - 0.5 + 1e-9
    # Elastic: the speed between samples never exceeds the initial speed and the
    # object does reach the walls.
    speed = np.hypot(obj.motion.vx, obj.motion.vy)
    assert np.all(np.hypot(np.diff(cx), np.diff(cy)) <= speed * (t[1] - t[0]) + 1e-9)
    assert (np.isclose(cx.min() - half_w, -0.5, atol=0.1)
            or np.isclose(cy.min() - half_h, -0.5, atol=0.1))
  # Rendered: drawn on a larger canvas with the frame at (pad, pad), the object
  # never shows outside the frame, and inside it looks exactly the same.
  pad = 16
  for seed in range(5):
    obj = sp.sample_object(np.random.default_rng(seed), "green", "bouncing", T, H, W)
    m = obj.motion
    shifted = sp.BouncingMotion(m.x0 + pad, m.y0 + pad, m.vx, m.vy, m.x_lo + pad,
                                m.x_hi + pad, m.y_lo + pad, m.y_hi + pad, m.theta0)
    clip = sp.render_scene(_scene(obj), 40)
    big = sp.render_scene(_scene(dataclasses.replace(obj, motion=shifted),
                                 height=H + 2 * pad, width=W + 2 * pad), 40)
    assert big.segmentation.sum() == clip.segmentation.sum() > 0
    np.testing.assert_array_equal(big.segmentation[:, pad:-pad, pad:-pad], clip.segmentation)
    # It really reaches the walls: within one frame's travel of the border.
    ys, xs = np.nonzero((clip.segmentation == 1).any(axis=0))
    gap = min(xs.min(), ys.min(), W - 1 - xs.max(), H - 1 - ys.max())
    assert gap <= np.hypot(m.vx, m.vy)


def test_falling_object_accelerates_between_floor_bounces():
  motion = sp.FallingMotion(x0=16.0, vx=0.3, x_lo=5.5, x_hi=25.5, y_floor=25.5,
                            peak_height=18.0, gravity=0.8, phase=-1.0)
  clip = sp.render_scene(_scene(_object("circle", "cyan", 6.0, motion)), 30)
  # Vertical velocity per frame interval, read from the rendered flow.
  dy = np.array([clip.flow[k][clip.segmentation[k] == 1][:, 1].mean() for k in range(29)])
  y = motion.pose(np.arange(30))[1]
  np.testing.assert_allclose(dy, np.diff(y), atol=1e-4)
  bounces = np.nonzero(np.diff(dy) < 0)[0]  # the only decelerations: at the floor
  assert len(bounces) >= 2
  between = np.diff(dy)[np.diff(dy) > 0]
  np.testing.assert_allclose(between, 0.8, atol=1e-5)  # dv/dt = g (float32 flow)
  assert y.max() <= 25.5 + 1e-9 and y.min() >= 25.5 - 18.0 - 1e-9
  # Elastic: the bounce returns it to the same peak height.
  assert np.isclose(y.min(), 25.5 - 18.0, atol=0.3)


def test_sampled_falling_objects_stay_inside():
  rng = np.random.default_rng(1)
  t = np.linspace(0, 100, 2001)
  for _ in range(30):
    obj = sp.sample_object(rng, "blue", "falling", T, H, W)
    cx, cy, theta = obj.motion.pose(t)
    half_w, half_h = obj.half_extent(theta[0])
    assert cy.max() + half_h <= H - 0.5 + 1e-9 and cy.min() - half_h >= -0.5 - 1e-9
    assert cx.min() - half_w >= -0.5 - 1e-9 and cx.max() + half_w <= W - 0.5 + 1e-9
    v = obj.motion.vertical_velocity(t)
    assert np.all(np.abs(v) <= np.sqrt(2 * obj.motion.gravity * obj.motion.peak_height) + 1e-9)


def test_motion_kinds_restrict_the_motions_drawn():
  for seed in range(12):
    clip = sp.render_clip(seed, T, H, W, 3, motion_kinds=("linear", "falling"))
    assert {type(o.motion) for o in clip.scene.objects} <= {sp.LinearMotion, sp.FallingMotion}
  # The default draws every kind; the same seed with the same kinds is the same clip.
  kinds = {type(o.motion) for s in range(40) for o in sp.render_clip(s, T, H, W, 3).scene.objects}
  assert kinds == {sp.LinearMotion, sp.BouncingMotion, sp.FallingMotion, sp.RotatingMotion}
  np.testing.assert_array_equal(sp.render_clip(5, T, H, W, motion_kinds=sp.MOTION_KINDS).video,
                                sp.render_clip(5, T, H, W).video)


@pytest.mark.parametrize("kinds", [(), ("linear", "linear"), ("linear", "spinning")])
def test_bad_motion_kinds_are_refused(kinds):
  with pytest.raises(ValueError, match="motion kinds"):
    sp.render_clip(0, T, H, W, motion_kinds=kinds)
