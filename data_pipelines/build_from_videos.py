"""Builds a training clip dataset from video files, with precomputed optical flow.

  python -m data_pipelines.build_from_videos --videos DIR_OR_GLOB --captions FILE \
      --output_dir DIR --num_frames 8 --height 32 --width 32 --fps 8 --stride 8 \
      --estimator dis --preset medium --sigma 0.15 --workers 2

Writes a TFDS dataset in the shared clip format (videojam_jax/data/clip_records.py) at

  <output_dir>/video_clips/<config name>/1.0.0/

plus build_report.json beside that version folder (files used, files skipped and
why, clip counts, timing). The flow cache lives in <output_dir>/video_clips_work
(or --work_dir): rerunning after an interruption, or after adding videos, only
processes what is new; rerunning with nothing new rewrites nothing. Files that
cannot give clips are skipped and reported, never fatal; videos without a caption
are skipped too (see data_pipelines/captions.py for why).

Two stages, so that the expensive one is resumable and parallel:
  1. flow_workers.py: a process pool decodes each file, cuts clips and estimates
     their flow into the cache (clip_cache.py), a file at a time.
  2. video_clips_builder.py: the TFDS builder encodes the motion videos from the
     cached flow and writes the shards, split by file (splits.py).

--output_dir must be local: ArrayRecord's writer (which TFDS uses for the shards)
writes local files only. Copy the finished dataset folder to a bucket
(`gcloud storage cp -r`) and point the trainer at the gs:// copy: reading needs no
gcsfuse.

Point the trainer at it with --config.data.dataset_dir=<output_dir>/video_clips/<config name>
and the same num_frames / height / width / flow_sigma.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath
import tensorflow_datasets as tfds

from data_pipelines import captions as captions_lib
from data_pipelines import tfds_prepare
from data_pipelines import clip_cache
from data_pipelines import flow_workers
from data_pipelines import motion_filters
from data_pipelines import splits as splits_lib
from data_pipelines import video_clips_builder
from data_pipelines import video_files
from videojam_jax import files
from videojam_jax.data import flow_estimators
from videojam_jax.data import motion_encoding

REPORT_NAME = "build_report.json"
WORK_DIR_NAME = "video_clips_work"
DEFAULT_VALIDATION_FRACTION = 0.05
# The Beam engine's options on this machine when no --runner is given.
LOCAL_BEAM_OPTIONS = ("--runner=FnApiRunner", "--direct_num_workers={workers}",
                      "--direct_running_mode=multi_processing")
SUMMARY_MAX_FILES = 20  # skipped files listed in the printed summary (the JSON has all)
REPORT_INDENT = 2


class NoClipsError(RuntimeError):
  """No file gave a clip; nothing to write."""


@dataclasses.dataclass
class BuildReport:
  """What a build did; saved as build_report.json and printed as a summary."""
  dataset_dir: str | None
  report_path: str
  settings: dict[str, Any]
  files_found: int
  files_with_clips: int
  files_from_cache: int
  clips: dict[str, int]
  skipped: list[dict[str, str]]
  warnings: list[str]
  dataset_rewritten: bool
  seconds: dict[str, float]
  new_clips_per_second: float
  # Shot cuts: files whose clips come from more than one shot, and the shots that
  # gave clips (no clip spans a cut: video_files.py).
  files_split_at_cuts: int = 0
  shots_with_clips: int = 0
  # Clips the motion filters dropped, by reason (motion_filters.py: static, fast).
  clips_dropped: dict[str, int] = dataclasses.field(default_factory=dict)

  def summary(self) -> str:
    """A few human lines: counts, skipped files by reason, where things are."""
    total = sum(self.clips.values())
    splits = ", ".join(f"{k} {v}" for k, v in self.clips.items())
    lines = [f"{total} clips ({splits}) from {self.files_with_clips} of "
             f"{self.files_found} files ({self.files_from_cache} from cache) in "
             f"{self.seconds['total']:.1f}s; new clips at {self.new_clips_per_second:.1f} clips/s."]
    if any(self.clips_dropped.values()):
      lines.append("Motion filters dropped " + ", ".join(
          f"{n} {reason}" for reason, n in sorted(self.clips_dropped.items())) + " clips.")
    if self.files_split_at_cuts:
      lines.append(f"Shot cuts: {self.files_split_at_cuts} files split into "
                   f"{self.shots_with_clips} shots with clips in all; no clip spans a cut.")
    if self.dataset_dir:
      state = "written" if self.dataset_rewritten else "unchanged, not rewritten"
      lines.append(f"Dataset ({state}): {self.dataset_dir}")
    if self.skipped:
      reasons = Counter(s["reason"] for s in self.skipped)
      lines.append(f"Skipped {len(self.skipped)} files: " +
                   ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
      lines += [f"  [{s['reason']}] {s['path']}: {s['detail']}"
                for s in self.skipped[:SUMMARY_MAX_FILES]]
      if len(self.skipped) > SUMMARY_MAX_FILES:
        lines.append(f"  ... and {len(self.skipped) - SUMMARY_MAX_FILES} more (see the report)")
    lines += [f"Warning: {w}" for w in self.warnings]
    lines.append(f"Report: {self.report_path}")
    return "\n".join(lines)


def build(videos: str | None, captions: str, output_dir: str, *, num_frames: int = 8,
          height: int = 32, width: int = 32, fps: float = 8.0, stride: int = 8,
          max_clips_per_video: int = 0,
          cut_threshold: float = video_files.DEFAULT_CUT_THRESHOLD,
          min_motion_px: float = 0.0, max_motion_px: float = 0.0,
          flow_storage: str = "none", engine: str = "pool",
          beam_options: Sequence[str] = (), dry_run: bool = False,
          estimator: str = flow_estimators.DEFAULT_ESTIMATOR,
          preset: str | None = None, estimator_weights: str | None = None,
          estimator_modules: Sequence[str] = (),
          sigma: float = motion_encoding.DEFAULT_SIGMA,
          validation_fraction: float = DEFAULT_VALIDATION_FRACTION, workers: int = 2,
          work_dir: str | None = None, progress: bool = True,
          max_shard_mb: float = tfds_prepare.DEFAULT_MAX_SHARD_MB) -> BuildReport:
  """Builds (or updates) the clip dataset; returns the report (also saved as JSON).

  Raises FlowEstimatorError for a bad estimator, CaptionsError for a malformed
  captions file, and NoClipsError (after saving the report) if no file gave a clip.
  Bad video files never raise: they are skipped and listed in the report.
  `output_dir` must be local (ValueError otherwise): ArrayRecord writes local files only.
  `max_shard_mb` bounds a shard file's size when the dataset is (re)written.
  """
  if not files.is_local(output_dir):
    raise ValueError(
        f"output_dir={output_dir!r} is a cloud path, but ArrayRecord (the shard format) writes "
        "local files only: build into a local folder, then copy it to the bucket "
        "(gcloud storage cp -r); the trainer reads gs:// datasets directly")
  start = time.perf_counter()
  motion_filter = motion_filters.MotionFilter(min_motion_px, max_motion_px)
  clip_spec = video_files.ClipSpec(num_frames=num_frames, height=height, width=width,
                                   fps=fps, stride=stride, max_clips=max_clips_per_video,
                                   cut_threshold=cut_threshold)
  if estimator == "dis" and not preset:
    preset = flow_estimators.DEFAULT_DIS_PRESET  # explicit, so cache keys agree
  options = {}
  if preset:
    options["preset"] = preset
  if estimator_weights:
    options["weights_path"] = estimator_weights
  flow_spec = flow_workers.FlowSpec(estimator, tuple(sorted(options.items())),
                                    tuple(estimator_modules))
  estimator_name = flow_spec.create().name  # fail fast, before any worker starts
  config = video_clips_builder.make_builder_config(
      clip_spec=clip_spec, flow_estimator=estimator_name, flow_sigma=sigma,
      motion_filter=motion_filter, flow_storage=flow_storage)
  config_dir = epath.Path(output_dir) / video_clips_builder.VideoClips.name / config.name
  version_dir = config_dir / str(video_clips_builder.VideoClips.VERSION)
  work_dir = work_dir or os.path.join(output_dir, WORK_DIR_NAME)

  # Inputs.
  caption_map, warnings = captions_lib.load_captions(captions)
  paths = captions_lib.find_videos(videos) if videos else None
  if paths is not None and not paths:
    warnings.append(f"no video files found at {videos!r}")
  sources, skipped = captions_lib.match_captions(paths, caption_map, captions)
  if paths is not None:
    unused = len(set(caption_map) - set(paths))
    if unused:
      warnings.append(f"{unused} captions name files not among --videos; not used")
  keyed = []
  for source in sources:
    try:
      keyed.append(dataclasses.replace(
          source, key=clip_cache.cache_key(source.path, clip_spec, estimator_name, flow_spec)))
    except OSError as e:  # vanished or unreadable since it was listed
      skipped.append(captions_lib.Skipped(source.path, "missing_file", str(e)))
  sources = keyed
  settings = dict(videos=videos, captions=captions, output_dir=output_dir,
                  work_dir=work_dir, config_name=config.name,
                  flow_estimator=estimator_name, flow_sigma=sigma,
                  validation_fraction=validation_fraction, workers=workers, engine=engine,
                  max_shard_mb=max_shard_mb, **dataclasses.asdict(clip_spec))
  if engine == "beam":
    return _build_with_beam(
        sources, validation_fraction, skipped, warnings, config=config, clip_spec=clip_spec,
        flow_spec=flow_spec, output_dir=output_dir, config_dir=config_dir,
        version_dir=version_dir, beam_options=beam_options, dry_run=dry_run,
        settings=settings, start=start, workers=workers, max_shard_mb=max_shard_mb)
  if engine != "pool":
    raise ValueError(f"engine={engine!r}: choose 'pool' or 'beam'")

  # Stage 1: clips + flow.
  prepared = flow_workers.prepare_clips(sources, clip_spec, flow_spec, work_dir,
                                        workers=workers, progress=progress)
  good = {r.path for r in prepared.results if r.status in ("done", "cached")}
  skipped += [captions_lib.Skipped(r.path, r.reason, r.detail)
              for r in prepared.results if r.path not in good]
  usable = [s for s in sources if s.path in good]
  # Motion filters, from the statistics stage 1 cached: a file left without clips is
  # not used (it takes no place in a split).
  dropped = Counter({motion_filters.STATIC: 0, motion_filters.FAST: 0})
  keep = video_clips_builder.kept_clips(clip_cache.ClipCache(work_dir), usable, motion_filter,
                                        dropped)
  if usable and not any(keep.values()):
    warnings.append(f"the motion filters dropped every clip ({dict(dropped)})")
  usable = [s for s in usable if keep[s.key]]

  # Stage 2: TFDS shards (skipped when the same content is already there).
  split_of = splits_lib.assign_splits([s.name for s in usable], validation_fraction)
  plan = video_clips_builder.WritePlan(work_dir, {
      split: [s for s in usable if split_of[s.name] == split]
      for split in splits_lib.SPLITS})
  write_start = time.perf_counter()
  rewritten = False
  clips = {split: sum(len(keep[s.key]) for s in split_sources)
           for split, split_sources in plan.splits.items()}
  if usable and not plan.splits["validation"]:
    warnings.append("no validation split (validation_fraction=0 or a single file); "
                    "a trainer evaluating on 'validation' needs one")
  dataset_dir = None
  if usable:
    dataset_dir = os.fspath(version_dir)
    if video_clips_builder.existing_digest(version_dir) != plan.digest(config):
      _write_dataset(plan, config, output_dir, version_dir, max_shard_mb)
      rewritten = True

  config_dir.mkdir(parents=True, exist_ok=True)
  report = BuildReport(
      dataset_dir=dataset_dir, report_path=os.fspath(config_dir / REPORT_NAME),
      settings=settings,
      files_found=len(sources) + sum(s.reason == "no_caption" for s in skipped),
      files_with_clips=len(usable),
      files_from_cache=sum(r.status == "cached" for r in prepared.results),
      clips=clips,
      skipped=[dataclasses.asdict(s) for s in skipped],
      warnings=warnings,
      dataset_rewritten=rewritten,
      seconds=dict(prepare=round(prepared.seconds, 3),
                   write=round(time.perf_counter() - write_start, 3),
                   total=round(time.perf_counter() - start, 3)),
      new_clips_per_second=round(prepared.clips_per_second, 3),
      files_split_at_cuts=sum(r.num_shots > 1 for r in prepared.results if r.path in good),
      shots_with_clips=sum(r.num_shots for r in prepared.results if r.path in good),
      clips_dropped=dict(dropped))
  files.atomic_write(report.report_path,
                     json.dumps(dataclasses.asdict(report), indent=REPORT_INDENT))
  if not usable:
    raise NoClipsError(
        f"no file gave a clip; nothing written.\n{report.summary()}")
  return report


def _build_with_beam(sources: list[captions_lib.SourceVideo], validation_fraction: float,
                     skipped: list[captions_lib.Skipped], warnings: list[str], *,
                     config: video_clips_builder.VideoClipsConfig,
                     clip_spec: video_files.ClipSpec, flow_spec: flow_workers.FlowSpec,
                     output_dir: str, config_dir: epath.Path, version_dir: epath.Path,
                     beam_options: Sequence[str], dry_run: bool, settings: dict[str, Any],
                     start: float, workers: int, max_shard_mb: float) -> BuildReport | None:
  """The Beam engine (video_clips_beam.py): decode, flow, encode and write in one pipeline.

  `beam_options` are Beam's own flags, e.g. DataflowRunner's --runner, --project,
  --region, --temp_location. Without --runner the build runs here on Beam's FnApiRunner
  in `workers` processes (LOCAL_BEAM_OPTIONS): the engine of the DirectRunner, which
  would first try to download its Prism runner binary, and nothing is downloaded at
  run time here. dry_run: check the options, print the plan, write nothing (returns
  None).
  """
  from apache_beam.options import pipeline_options  # pylint: disable=import-outside-toplevel
  from data_pipelines import video_clips_beam  # pylint: disable=import-outside-toplevel
  beam_options = list(beam_options)
  if not any(o.startswith("--runner") for o in beam_options):
    beam_options = [o.format(workers=max(1, workers)) for o in LOCAL_BEAM_OPTIONS] + beam_options
  options = pipeline_options.PipelineOptions(beam_options)
  runner = options.view_as(pipeline_options.StandardOptions).runner or "DirectRunner"
  # Splits are assigned in the pipeline, among the files that give clips (as the pool
  # engine does after its first stage); the plan lists every input file once.
  plan = video_clips_builder.WritePlan("", {splits_lib.SPLITS[0]: sources})
  if dry_run:
    print(f"Beam build (dry run, nothing written): runner {runner}, options "
          f"{options.get_all_options(drop_default=True)}; {len(sources)} captioned files, "
          f"validation_fraction {validation_fraction} -> {version_dir}")
    return None
  config_dir.mkdir(parents=True, exist_ok=True)
  rewritten = False
  if len(sources) < 2 and validation_fraction:   # assign_splits needs two files
    warnings.append("no validation split (a single file); a trainer evaluating on "
                    "'validation' needs one")
    validation_fraction = 0.0

  def write(fraction: float) -> None:
    version_dir.rmtree(missing_ok=True)
    builder = video_clips_beam.VideoClipsBeam(
        plan=plan, beam_spec=video_clips_beam.BeamSpec(
            clip_spec, flow_spec, os.fspath(config_dir), fraction),
        config=config, data_dir=output_dir, file_format=video_clips_builder.FILE_FORMAT)
    tfds_prepare.prepare(builder, beam_options=options, max_shard_mb=max_shard_mb)

  if sources and video_clips_builder.existing_digest(version_dir) != plan.digest(config):
    try:
      write(validation_fraction)
    except ValueError as e:
      # TFDS refuses an empty split; only one file gave clips, which is known only now.
      if "examples is 0 for split validation" not in str(e):
        raise
      warnings.append("no validation split (only one file gave clips): built again with "
                      "train only")
      write(0.0)
    rewritten = True
  beam_skipped, counters = video_clips_beam.read_reports(os.fspath(config_dir))
  skipped += [captions_lib.Skipped(s["path"], s["reason"], s["detail"]) for s in beam_skipped]
  splits = (tfds.builder_from_directory(os.fspath(version_dir)).info.splits
            if (version_dir / "dataset_info.json").exists() else {})
  clips = {split: (splits[split].num_examples if split in splits else 0)
           for split in splits_lib.SPLITS}
  seconds = round(time.perf_counter() - start, 3)
  report = BuildReport(
      dataset_dir=os.fspath(version_dir) if sum(clips.values()) else None,
      report_path=os.fspath(config_dir / REPORT_NAME), settings=settings,
      files_found=len(sources) + sum(s.reason == "no_caption" for s in skipped),
      files_with_clips=counters.get("files_with_clips", 0), files_from_cache=0, clips=clips,
      skipped=[dataclasses.asdict(s) for s in skipped], warnings=warnings,
      dataset_rewritten=rewritten,
      seconds=dict(prepare=0.0, write=seconds, total=seconds),
      # Beam has no flow cache: every clip of a rewrite is new (none when nothing changed).
      new_clips_per_second=round(sum(clips.values()) / seconds, 3) if rewritten else 0.0,
      files_split_at_cuts=counters.get("files_split_at_cuts", 0),
      shots_with_clips=counters.get("shots_with_clips", 0),
      clips_dropped={reason: counters.get(f"clips_dropped_{reason}", 0)
                     for reason in (motion_filters.FAST, motion_filters.STATIC)})
  files.atomic_write(report.report_path,
                     json.dumps(dataclasses.asdict(report), indent=REPORT_INDENT))
  if not sum(clips.values()):
    raise NoClipsError(f"no file gave a clip; nothing written.\n{report.summary()}")
  return report


def _write_dataset(plan: video_clips_builder.WritePlan,
                   config: video_clips_builder.VideoClipsConfig,
                   output_dir: str, version_dir: epath.Path, max_shard_mb: float) -> None:
  """Writes the shards from the cache, replacing an older dataset of this config."""
  # The old version folder must go before the builder is made: TFDS would
  # otherwise restore the old dataset's info (metadata included) from it.
  version_dir.rmtree(missing_ok=True)
  builder = video_clips_builder.VideoClips(plan=plan, config=config, data_dir=output_dir,
                                           file_format=video_clips_builder.FILE_FORMAT)
  tfds_prepare.prepare(builder, max_shard_mb=max_shard_mb)


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program: importing this
  module for `build` must not claim flag names)."""
  flags.DEFINE_string(
      "videos", None, "Directory (searched recursively for video files) or glob. "
      "Default: the videos the captions file lists.")
  flags.DEFINE_string(
      "captions", None, "JSONL ({'video': path, 'caption': text} per line) or CSV "
      "(columns video,caption); relative paths are relative to this file.")
  flags.DEFINE_string("output_dir", None, "TFDS data_dir to write into (a local folder).")
  flags.DEFINE_string(
      "work_dir", None, f"Flow cache, a LOCAL folder; default <output_dir>/{WORK_DIR_NAME}.")
  flags.DEFINE_integer("num_frames", 8, "Frames per clip.")
  flags.DEFINE_integer("height", 32, "Frame height.")
  flags.DEFINE_integer("width", 32, "Frame width.")
  flags.DEFINE_float("fps", 8.0, "Frame rate the videos are resampled to.")
  flags.DEFINE_integer("stride", 8, "Frames between clip starts (< num_frames: overlap).")
  flags.DEFINE_integer("max_clips_per_video", 0, "Clips per file at most (0: all).")
  flags.DEFINE_float(
      "cut_threshold", video_files.DEFAULT_CUT_THRESHOLD,
      "Shot-cut threshold (PySceneDetect ContentDetector); clips never span a cut. 0: off.")
  flags.DEFINE_enum(
      "store_flow", "none", ["none", "float16", "float32"],
      "Also store the raw flow in the records (evaluation, inspection). Training reads only "
      "the motion video; float32 flow is over half of a record's bytes.")
  flags.DEFINE_float(
      "min_motion_px", 0.0,
      "Drop clips whose mean flow is below this (px/frame at the output size). 0: off.")
  flags.DEFINE_float(
      "max_motion_px", 0.0,
      "Drop clips whose 99th-percentile flow is above this (px/frame). 0: off.")
  flags.DEFINE_string(
      "estimator", flow_estimators.DEFAULT_ESTIMATOR,
      f"Flow estimator, one of {flow_estimators.available_estimators()} or a plug-in's name.")
  flags.DEFINE_string(
      "preset", None, f"DIS preset: {sorted(flow_estimators.DIS_PRESETS)} "
      f"(default {flow_estimators.DEFAULT_DIS_PRESET}).")
  flags.DEFINE_string(
      "estimator_weights", None, "Weights file for learned estimators (e.g. RAFT).")
  flags.DEFINE_list(
      "estimator_module", [], "Modules to import first (they register plug-in estimators).")
  flags.DEFINE_float("sigma", motion_encoding.DEFAULT_SIGMA, "Motion encoding sigma.")
  flags.DEFINE_float(
      "validation_fraction", DEFAULT_VALIDATION_FRACTION,
      "Fraction of files (not clips) in the validation split; 0: train only.")
  flags.DEFINE_float("max_shard_mb", tfds_prepare.DEFAULT_MAX_SHARD_MB,
                     "Largest shard to write, in MiB of serialized records before "
                     "ArrayRecord's compression (each shard read is an open file in every "
                     "process that reads the dataset).")
  flags.DEFINE_integer("workers", 2, "Processes for decoding + flow (<= 1: in-process).")
  flags.DEFINE_enum("engine", "pool", ["pool", "beam"],
                    "pool: a process pool and a flow cache on this machine (resumable); "
                    "beam: an Apache Beam pipeline (Beam's FnApiRunner in --workers "
                    "processes here, Dataflow at scale).")
  flags.DEFINE_multi_string(
      "beam_option", [], "A Beam pipeline flag, repeated, e.g. --beam_option=--runner="
      "DataflowRunner --beam_option=--project=P. Without --runner: the local FnApiRunner.")
  flags.DEFINE_bool("dry_run", False, "Beam: check the options and print the plan; write "
                    "nothing.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    report = build(
        f.videos, f.captions, f.output_dir, num_frames=f.num_frames, height=f.height,
        width=f.width, fps=f.fps, stride=f.stride, max_clips_per_video=f.max_clips_per_video,
        cut_threshold=f.cut_threshold, flow_storage=f.store_flow, engine=f.engine,
        beam_options=f.beam_option, dry_run=f.dry_run,
        min_motion_px=f.min_motion_px,
        max_motion_px=f.max_motion_px,
        estimator=f.estimator, preset=f.preset, estimator_weights=f.estimator_weights,
        estimator_modules=f.estimator_module, sigma=f.sigma,
        validation_fraction=f.validation_fraction, workers=f.workers, work_dir=f.work_dir,
        max_shard_mb=f.max_shard_mb)
  except (NoClipsError, captions_lib.CaptionsError, clip_cache.WorkDirError,
          flow_workers.WorkerStartError, flow_estimators.FlowEstimatorError) as e:
    raise SystemExit(f"error: {e}") from None  # a message, not a traceback
  if report is not None:   # None: a dry run, which printed its plan
    print(report.summary())


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["captions", "output_dir"])
  app.run(main)
