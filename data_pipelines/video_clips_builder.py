"""TFDS builder `video_clips`: clips cut from video files, with precomputed flow.

Stage 2 of a video build (stage 1, flow_workers.py, filled the cache). Reads the
cache (clip_cache.py), encodes the motion video from the flow (so flow_sigma can
change without recomputing flow) and writes ArrayRecord shards in the shared
clip format (videojam_jax/data/clip_records.py), split into train / validation
by file (splits.py).

Layout: <data_dir>/video_clips/<config name>/1.0.0/ (config name spells out the
clip settings, as synthetic_physics does); data_dir may be local or gs://. Read
back without TensorFlow:
  tfds.builder_from_directory(version_dir).as_data_source("train")
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import motion_filters
from data_pipelines import video_files
from data_pipelines.captions import SourceVideo
from data_pipelines.clip_cache import ClipCache
from videojam_jax import files
from videojam_jax.data import clip_records
from videojam_jax.data import motion_encoding

SOURCE = "video_files"
FILE_FORMAT = "array_record"
# Examples prepared ahead of the TFDS writer (bounded: each is several MB).
WRITE_PREFETCH = 4
RESIZE_METHOD = "cover_then_centre_crop"   # recorded in the metadata (video_files.py)


@dataclasses.dataclass(eq=False)
class VideoClipsConfig(tfds.core.BuilderConfig):
  """Clip settings of a video_clips dataset. Build one with `make_builder_config`."""
  num_frames: int = 8
  height: int = 32
  width: int = 32
  fps: float = 8.0
  stride: int = 8
  max_clips_per_video: int = 0
  cut_threshold: float = video_files.DEFAULT_CUT_THRESHOLD
  flow_storage: str = "none"     # clip_records.FLOW_STORAGE: none | float16 | float32
  min_motion_px: float = 0.0     # motion_filters.MotionFilter (0: off)
  max_motion_px: float = 0.0
  flow_estimator: str = "dis:medium"
  flow_sigma: float = motion_encoding.DEFAULT_SIGMA


def make_builder_config(*, clip_spec: video_files.ClipSpec, flow_estimator: str,
                        flow_sigma: float,
                        motion_filter: motion_filters.MotionFilter = motion_filters.MotionFilter(),
                        flow_storage: str = "none") -> VideoClipsConfig:
  """A builder config whose name spells out every clip setting (motion filters when on)."""
  if not clip_spec.fps or clip_spec.fps <= 0:
    raise ValueError("a dataset needs one frame rate: set fps > 0")
  estimator = flow_estimator.replace(":", "-")
  name = (f"{clip_spec.num_frames}x{clip_spec.height}x{clip_spec.width}-fps{clip_spec.fps:g}"
          f"-stride{clip_spec.stride}-max{clip_spec.max_clips}-cut{clip_spec.cut_threshold:g}"
          f"-{estimator}"
          f"-sigma{flow_sigma:g}")
  if flow_storage not in clip_records.FLOW_STORAGE:
    raise ValueError(f"flow_storage={flow_storage!r}: choose from "
                     f"{sorted(clip_records.FLOW_STORAGE)}")
  if flow_storage != "none":
    name += f"-flow{flow_storage.removeprefix('float')}"
  if motion_filter.min_mean_px or motion_filter.max_p99_px:
    name += f"-motion{motion_filter.min_mean_px:g}to{motion_filter.max_p99_px:g}"
  return VideoClipsConfig(
      name=name, version=VideoClips.VERSION,
      description=f"Clips of {clip_spec.num_frames}x{clip_spec.height}x{clip_spec.width} "
                  f"at {clip_spec.fps:g} fps, flow by {flow_estimator}.",
      num_frames=clip_spec.num_frames, height=clip_spec.height, width=clip_spec.width,
      fps=float(clip_spec.fps), stride=clip_spec.stride,
      max_clips_per_video=clip_spec.max_clips, cut_threshold=float(clip_spec.cut_threshold),
      flow_storage=flow_storage, min_motion_px=float(motion_filter.min_mean_px),
      max_motion_px=float(motion_filter.max_p99_px),
      flow_estimator=flow_estimator,
      flow_sigma=float(flow_sigma))


@dataclasses.dataclass(frozen=True)
class WritePlan:
  """What stage 2 writes: per split, the (source, cache key) pairs, in order."""
  work_dir: str
  splits: dict[str, list[SourceVideo]]

  def digest(self, config: VideoClipsConfig) -> str:
    """Identifies the dataset content: equal digests -> identical datasets.

    Stored in the dataset's metadata (inputs_digest), so its encoding must not
    change: the full 64 hex digits of files.json_digest.
    """
    content = dict(config=config.name, splits={
        split: [(s.name, s.caption, s.key) for s in sources]
        for split, sources in self.splits.items()})
    return files.json_digest(content, length=None)


class VideoClips(tfds.core.GeneratorBasedBuilder):
  """Clips from video files with estimated optical flow, in the shared clip format."""

  VERSION = tfds.core.Version("1.0.0")
  # Raw bytes: ArrayRecord's zstd compresses each record (clip_records.TENSOR_ENCODING).
  TENSOR_ENCODING = clip_records.TENSOR_ENCODING
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = []  # every setting is a config made by make_builder_config

  def __init__(self, *, plan: WritePlan, **kwargs: Any):
    self._plan = plan
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default needs the optional `importlib_resources` (not installed).
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly: dataset_info_from_configs needs a registered TFDS package.
    config: VideoClipsConfig = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.splitlines()[0],
        features=clip_records.clip_features(config.num_frames, config.height, config.width,
                                            config.flow_storage, self.TENSOR_ENCODING),
        metadata=clip_records.clip_metadata(
            num_frames=config.num_frames, height=config.height, width=config.width,
            fps=config.fps, flow_estimator=config.flow_estimator,
            flow_sigma=config.flow_sigma, source=SOURCE, stride=config.stride,
            max_clips_per_video=config.max_clips_per_video,
            cut_threshold=config.cut_threshold, flow_storage=config.flow_storage,
            min_motion_px=config.min_motion_px,
            max_motion_px=config.max_motion_px,
            resize=RESIZE_METHOD,
            num_videos={s: len(v) for s, v in self._plan.splits.items()},
            inputs_digest=self._plan.digest(config)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(sources)
            for split, sources in self._plan.splits.items() if sources}

  def _generate_examples(self, sources: list[SourceVideo]):
    config: VideoClipsConfig = self.builder_config
    cache = ClipCache(self._plan.work_dir)

    keep = kept_clips(cache, sources, motion_filter_of(config))

    def cached_clips():
      for source in sources:
        for index, start, video, flow in cache.read_clips(source.key):
          if index in keep[source.key]:
            yield source, index, start, video, flow

    def make_example(item) -> tuple[str, dict[str, Any]]:
      return clip_example(config, *item)

    # TFDS serializes each example in this thread (ArrayRecord compresses it); encoding
    # the next motion videos meanwhile in another (NumPy releases the GIL) uses a second core.
    yield from prefetch_map(make_example, cached_clips(), WRITE_PREFETCH)


def clip_example(config: VideoClipsConfig, source: SourceVideo, index: int, start: float,
                 video: np.ndarray, flow: np.ndarray) -> tuple[str, dict[str, Any]]:
  """One clip's (key, TFDS example), whichever engine computed it."""
  clip_id = f"{source.name}#{index:05d}@{start:.3f}s"
  example = {
      "video": video,
      "motion": motion_encoding.flows_to_motion_video(flow, config.flow_sigma),
      "caption": source.caption,
      "clip_id": clip_id,
  }
  flow_dtype = clip_records.FLOW_STORAGE[config.flow_storage]
  if flow_dtype is not None:
    example["flow"] = flow.astype(flow_dtype)
  return clip_id, example


def motion_filter_of(config: VideoClipsConfig) -> motion_filters.MotionFilter:
  return motion_filters.MotionFilter(config.min_motion_px, config.max_motion_px)


def kept_clips(cache: ClipCache, sources: Iterable[SourceVideo],
               motion_filter: motion_filters.MotionFilter,
               dropped: Counter | None = None) -> dict[str, set[int]]:
  """Per cache key, the indices of the clips the motion filter keeps (from the
  manifests' statistics: no arrays are read); counts the dropped ones by reason."""
  keep = {}
  for source in sources:
    keep[source.key] = set()
    for index, stats in enumerate(cache.motion_stats(source.key)):
      reason = motion_filter.reason_to_drop(stats)
      if reason is None:
        keep[source.key].add(index)
      elif dropped is not None:
        dropped[reason] += 1
  return keep


def prefetch_map(fn: Callable[[Any], Any], items: Iterable[Any], depth: int) -> Iterator[Any]:
  """map(fn, items) computed up to `depth` items ahead in a background thread."""
  with futures.ThreadPoolExecutor(1) as pool:
    queue: deque[futures.Future] = deque()
    for item in items:
      queue.append(pool.submit(fn, item))
      if len(queue) > depth:
        yield queue.popleft().result()
    while queue:
      yield queue.popleft().result()


def existing_digest(version_dir: epath.PathLike) -> str | None:
  """inputs_digest of a dataset already at `version_dir`, local or gs:// (None:
  absent, unfinished or unknown)."""
  version_dir = epath.Path(version_dir)
  metadata = version_dir / "metadata.json"
  if not (version_dir / "dataset_info.json").exists() or not metadata.exists():
    return None
  return json.loads(metadata.read_text()).get("inputs_digest")
