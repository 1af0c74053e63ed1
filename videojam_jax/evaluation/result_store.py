"""Finished (model, setting) results, one folder each, and running the jobs that lack one.

`ResultStore` keeps one folder per `sweep.Job` (`<root>/<model>/<setting name>/`)
holding the job's files and a `result.json`. A folder is assembled under a
temporary name and renamed into place only when complete, so an interrupted
sweep leaves either a finished result or nothing; `run_jobs` skips finished
results whose inputs (the fingerprint: checkpoint step, prompts, seeds, ...)
are unchanged. Paths go through etils.epath, so a store may live on gs://
(there a folder rename copies object by object: it is not atomic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from absl import logging
from etils import epath
import tqdm

from videojam_jax import files
from videojam_jax.evaluation import sweep as sweep_lib

RESULT_FILE = "result.json"
_STAGING_PREFIX = ".staging-"


class ResultStore:
  """Finished (model, setting) results under `root`, one folder each."""

  def __init__(self, root: epath.PathLike):
    root = epath.Path(root)
    # `resolve` makes a local path absolute but would prefix a URI with the cwd.
    self.root = root.resolve() if files.is_local(root) else root

  def path(self, job: sweep_lib.Job) -> epath.Path:
    """The folder of `job`'s finished result (it may not exist yet)."""
    return self.root.joinpath(*job.key.split("/"))

  def load(self, job: sweep_lib.Job,
           expected_fingerprint: str | None = None) -> dict[str, Any] | None:
    """The finished result of `job`, or None if absent or made from other inputs."""
    result_path = self.path(job) / RESULT_FILE
    if not result_path.exists():
      return None
    result = json.loads(result_path.read_text(encoding="utf-8"))
    # Results written before sampler settings had a schedule sampled on the uniform grid.
    result.get("settings", {}).setdefault("schedule", "uniform")
    if expected_fingerprint is not None and result.get("fingerprint") != expected_fingerprint:
      logging.info("%s: inputs changed since it was generated (checkpoint, prompts, seeds ...)",
                   job.key)
      return None
    return result

  @contextlib.contextmanager
  def staging(self, job: sweep_lib.Job) -> Iterator[epath.Path]:
    """A fresh folder to build `job`'s result in; on success it replaces the final one.

    The caller writes its files into the yielded folder; `save` writes
    result.json there. If the block raises, the folder is removed.
    """
    final = self.path(job)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.parent / f"{_STAGING_PREFIX}{final.name}.{os.getpid()}"
    stage.rmtree(missing_ok=True)
    stage.mkdir()
    try:
      yield stage
      if not (stage / RESULT_FILE).exists():
        raise RuntimeError(f"{job.key}: staged result has no {RESULT_FILE}")
      # A folder cannot be renamed over a non-empty one: drop the stale result
      # first. A crash in between leaves no result, which simply means "redo".
      final.rmtree(missing_ok=True)
      stage.replace(final)
    finally:
      stage.rmtree(missing_ok=True)

  @staticmethod
  def save(stage: epath.PathLike, result: Mapping[str, Any]) -> None:
    """Writes result.json into a staging folder (the last file written)."""
    files.atomic_write(epath.Path(stage) / RESULT_FILE,
                       json.dumps(json_safe(result), indent=1, allow_nan=False))

  def clean_staging(self) -> int:
    """Removes folders left by interrupted runs; returns how many."""
    if not self.root.is_dir():
      return 0
    removed = 0
    for parent, dirs, _ in self.root.walk():
      for d in list(dirs):
        if d.startswith(_STAGING_PREFIX):
          (parent / d).rmtree(missing_ok=True)
          dirs.remove(d)  # don't descend into what was just removed
          removed += 1
    return removed


def json_safe(value: Any) -> Any:
  """NaN/inf -> None (strict JSON), numpy scalars -> Python numbers, tuples -> lists."""
  if isinstance(value, Mapping):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if hasattr(value, "item") and callable(value.item):  # numpy scalar
    value = value.item()
  if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
    return None
  return value


@dataclasses.dataclass
class RunSummary:
  """What `run_jobs` did: results in job order, and which jobs it generated or reused."""
  results: list[dict[str, Any]]
  generated: list[str]
  reused: list[str]


GenerateFn = Callable[[sweep_lib.Job, epath.Path], dict[str, Any]]


def run_jobs(jobs: Sequence[sweep_lib.Job], store: ResultStore,
             fingerprints: Mapping[sweep_lib.Job, str], generate: GenerateFn, *,
             progress: bool = True) -> RunSummary:
  """Runs every job without a finished result; reuses the others.

  generate(job, stage_dir) writes the job's files into stage_dir and returns
  its result dict (JSON-serialisable); `fingerprints[job]` is stored with it.
  """
  stale = store.clean_staging()
  if stale:
    logging.info("removed %d unfinished result folder(s) of an interrupted run", stale)
  summary = RunSummary([], [], [])
  bar = tqdm.tqdm(jobs, desc="sweep", unit="setting", disable=not progress)
  for job in bar:
    bar.set_postfix_str(job.key)
    result = store.load(job, fingerprints[job])
    if result is not None:
      summary.reused.append(job.key)
    else:
      with store.staging(job) as stage:
        result = dict(generate(job, stage))
        result.update(key=job.key, model=job.model, fingerprint=fingerprints[job],
                      settings=dataclasses.asdict(job.settings))
        store.save(stage, result)
      summary.generated.append(job.key)
    summary.results.append(json_safe(result))  # as a reused result reads back
  bar.close()
  logging.info("sweep: %d setting(s) generated, %d reused from an earlier run",
               len(summary.generated), len(summary.reused))
  return summary
