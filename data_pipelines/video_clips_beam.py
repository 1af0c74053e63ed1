"""The `video_clips` dataset built by Apache Beam: one file per element, one clip per record.

`VideoClipsBeam` is `video_clips_builder.VideoClips` with its examples made by a
Beam pipeline instead of the process pool + clip cache, so a build can run on the
DirectRunner (several local processes) or on a distributed runner (Dataflow, Flink,
Spark). The steps are the pool path's own functions: `video_files.iter_clips`
(decode, resample, crop, cut at shots), `flow_workers.checked_flow` (the estimator),
`motion_filters` and `video_clips_builder.clip_example` (motion encoding, the
record), so both engines write the same records; TFDS's Beam writer shuffles and
writes them.

Per file, `ClipsOfFile` collects every clip before emitting any, so a file that turns
out corrupt or truncated halfway gives no clip at all. Bad files never fail the
pipeline: they are counted (Beam counters `video_clips:skipped_<reason>`) and listed
in a JSON-lines report (`SKIPPED_REPORT` beside the dataset's config folder); the
other counters (files, clips, shots, clips dropped by the motion filters) are
written to `COUNTERS_REPORT` when the pipeline finishes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

from absl import logging
import tensorflow_datasets as tfds

from data_pipelines import flow_workers
from data_pipelines import motion_filters
from data_pipelines import splits as splits_lib
from data_pipelines import video_clips_builder
from data_pipelines import video_files
from data_pipelines.captions import SourceVideo

COUNTER_NAMESPACE = "video_clips"
SKIPPED = "skipped"                        # the DoFn's tagged output of bad files
SKIPPED_REPORT = "beam_skipped.jsonl"
COUNTERS_REPORT = "beam_counters.json"


@dataclasses.dataclass(frozen=True)
class BeamSpec:
  """What every Beam worker needs to turn a file into clips (picklable)."""
  clip_spec: video_files.ClipSpec
  flow_spec: flow_workers.FlowSpec
  report_dir: str            # where the skipped-files and counter reports go
  validation_fraction: float  # splits.assign_splits, among the files that give clips


class ClipsOfFile:
  """Beam DoFn body: source -> (file name, (key, example)) per clip kept, or a tagged
  SKIPPED record for a file that gives none. The example is made here, before the
  split barrier, so what crosses it is the record (uint8 motion video; raw flow only
  if stored), not the float32 flow."""

  def __init__(self, spec: BeamSpec, motion_filter: motion_filters.MotionFilter,
               config: video_clips_builder.VideoClipsConfig):
    self.spec, self.motion_filter, self.config = spec, motion_filter, config
    self._estimator = None

  def setup(self) -> None:
    import cv2  # pylint: disable=import-outside-toplevel
    cv2.setNumThreads(1)   # one worker process per core, as the pool's workers
    self._estimator = self.spec.flow_spec.create()

  def process(self, source: SourceVideo) -> Iterator[Any]:
    beam = tfds.core.lazy_imports.apache_beam
    counter = lambda name: beam.metrics.Metrics.counter(COUNTER_NAMESPACE, name)
    try:
      clips = [(clip, flow_workers.checked_flow(self._estimator, clip.frames))
               for clip in video_files.iter_clips(source.path, self.spec.clip_spec,
                                                   decode_threads=1)]
    except video_files.VideoFileError as e:
      counter(f"skipped_{e.reason}").inc()
      yield beam.pvalue.TaggedOutput(SKIPPED, dict(path=source.path, reason=e.reason,
                                                   detail=e.detail))
      return
    shots = len({clip.shot for clip, _ in clips})
    counter("files_with_clips").inc()
    counter("shots_with_clips").inc(shots)
    if shots > 1:
      counter("files_split_at_cuts").inc()
    for clip, flow in clips:
      reason = self.motion_filter.reason_to_drop(motion_filters.motion_stats(flow))
      if reason is not None:
        counter(f"clips_dropped_{reason}").inc()
        continue
      counter("clips").inc()
      yield source.name, video_clips_builder.clip_example(
          self.config, source, clip.index, clip.start_time, clip.frames, flow)


def _do_fn(body: ClipsOfFile) -> Any:
  """`body` as a beam.DoFn (built lazily: Beam is imported only when a Beam build runs)."""
  beam = tfds.core.lazy_imports.apache_beam

  class _ClipsOfFileFn(beam.DoFn):
    def setup(self):
      body.setup()

    def process(self, element):
      yield from body.process(element)
  return _ClipsOfFileFn()


class VideoClipsBeam(video_clips_builder.VideoClips, skip_registration=True):
  """`video_clips` whose examples a Beam pipeline makes (same name, records, metadata)."""
  name = video_clips_builder.VideoClips.name
  # ZLIB: TFDS's Beam writer shuffles the serialized examples before ArrayRecord
  # compresses them; raw bytes made that shuffle about 2.5x bigger and the local build
  # slower (20-22 against 29-31 frames/s, benchmarks/video_pipeline_throughput.py).
  # The decoded records are the same either way.
  TENSOR_ENCODING = tfds.features.Encoding.ZLIB

  def __init__(self, *, plan: video_clips_builder.WritePlan, beam_spec: BeamSpec,
               **kwargs: Any):
    self._beam_spec = beam_spec
    super().__init__(plan=plan, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    info = super()._info()
    # Splits are assigned in the pipeline: the metadata counts the input files instead.
    info.metadata["num_videos"] = {"inputs": sum(len(v) for v in self._plan.splits.values())}
    return info

  def _split_generators(self, dl_manager, pipeline):  # pylint: disable=arguments-differ
    del dl_manager   # nothing to download
    beam = tfds.core.lazy_imports.apache_beam
    config = self.builder_config
    sources = [s for split_sources in self._plan.splits.values() for s in split_sources]
    results = (pipeline
               | "Files" >> beam.Create(sources)
               | "DecodeFlowFilterEncode" >> beam.ParDo(_do_fn(ClipsOfFile(
                   self._beam_spec, video_clips_builder.motion_filter_of(config), config)))
               .with_outputs(SKIPPED, main="clips"))
    _ = (results[SKIPPED]
         | "SkippedAsJson" >> beam.Map(lambda record: json.dumps(record, sort_keys=True))
         | "SkippedReport" >> beam.io.WriteToText(
             os.path.join(self._beam_spec.report_dir, SKIPPED_REPORT),
             shard_name_template="", num_shards=1))

    # Files get their split once it is known which give clips (the pool engine's rule).
    fraction = self._beam_spec.validation_fraction
    split_of = (results.clips
                | "FileNames" >> beam.Map(lambda item: item[0])
                | "Distinct" >> beam.Distinct()
                | "AllNames" >> beam.combiners.ToList()
                | "AssignSplits" >> beam.Map(
                    lambda names: splits_lib.assign_splits(names, fraction)))

    def examples_of(split: str):
      return (results.clips
              | f"Only{split}" >> beam.Filter(
                  lambda item, assigned, s=split: assigned[item[0]] == s,
                  assigned=beam.pvalue.AsSingleton(split_of))
              | f"Examples{split}" >> beam.Map(lambda item: item[1]))
    return {split: examples_of(split) for split in splits_lib.SPLITS
            if split == splits_lib.SPLITS[0] or fraction > 0}

  def _process_pipeline_result(self, pipeline_result) -> None:
    beam = tfds.core.lazy_imports.apache_beam
    query = pipeline_result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    counters: dict[str, int] = {}
    for result in query["counters"]:
      counters[result.key.metric.name] = counters.get(result.key.metric.name, 0) + int(
          result.committed if result.committed is not None else result.attempted)
    path = os.path.join(self._beam_spec.report_dir, COUNTERS_REPORT)
    with open(path, "w") as f:
      json.dump(counters, f, indent=1, sort_keys=True)
    logging.info("beam counters: %s", counters)


def read_reports(report_dir: str) -> tuple[list[dict[str, str]], dict[str, int]]:
  """(skipped files, counters) a Beam build left in `report_dir`."""
  skipped_path = os.path.join(report_dir, SKIPPED_REPORT)
  skipped = []
  if os.path.exists(skipped_path):
    with open(skipped_path) as f:
      skipped = [json.loads(line) for line in f if line.strip()]
  counters_path = os.path.join(report_dir, COUNTERS_REPORT)
  counters = {}
  if os.path.exists(counters_path):   # absent: the reports of an earlier run were removed
    with open(counters_path) as f:
      counters = json.load(f)
  return sorted(skipped, key=lambda s: s["path"]), counters
