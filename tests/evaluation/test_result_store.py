"""The result store: staged folders, resuming an interrupted sweep, strict JSON results."""

import dataclasses
import json
import os

import numpy as np
import pytest

from configs import sampling
from videojam_jax.evaluation import result_store
from videojam_jax.evaluation import sweep
from videojam_jax.sampling import sampler as sampler_lib

# configs/sampling.py's settings (the one place their defaults live), 2 steps.
BASE = sampler_lib.settings_from_config(sampling.get_config(), num_steps=2, text_scale=5.0,
                                        motion_scale=3.0)


class FakeGenerator:
  """Stands in for sampling: writes one file per job, can fail on a chosen job."""

  def __init__(self, fail_on: str | None = None):
    self.calls: list[str] = []
    self.fail_on = fail_on

  def __call__(self, job, stage):
    self.calls.append(job.key)
    with open(os.path.join(stage, "clip.txt"), "w") as f:
      f.write(job.key)
    if job.key == self.fail_on:
      raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-setting
    return {"clips": [{"metrics": {"m": float("nan")}}]}


@pytest.fixture
def jobs():
  settings = sweep.expand(BASE, {"guidance": ("cfg", "inner"), "motion_scale": (1.0, 3.0)})
  return sweep.plan({"videojam": True}, settings)[0]


def _mtimes(root):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(root) for f in files}


def test_interrupted_sweep_resumes_where_it_stopped(tmp_path, jobs):
  store = result_store.ResultStore(str(tmp_path))
  prints = {job: "v1" for job in jobs}

  # Interrupted during the second setting: the first is kept, nothing else is.
  fail = FakeGenerator(fail_on=jobs[1].key)
  with pytest.raises(KeyboardInterrupt):
    result_store.run_jobs(jobs, store, prints, fail, progress=False)
  assert fail.calls == [jobs[0].key, jobs[1].key]
  assert store.load(jobs[0], "v1") is not None
  assert all(store.load(j, "v1") is None for j in jobs[1:])
  assert not any(".staging" in p for p in _mtimes(tmp_path))

  # A folder left by a killed process (no cleanup ran) is not a result.
  (tmp_path / "videojam" / f".staging-{jobs[2].key.split('/')[1]}.999").mkdir()

  generate = FakeGenerator()
  summary = result_store.run_jobs(jobs, store, prints, generate, progress=False)
  assert generate.calls == [j.key for j in jobs[1:]]
  assert summary.reused == [jobs[0].key] and summary.generated == generate.calls
  assert [r["key"] for r in summary.results] == [j.key for j in jobs]
  assert not any(".staging" in p for p in _mtimes(tmp_path))
  # Results are strict JSON (NaN -> null) and read back exactly as returned.
  with open(os.path.join(store.path(jobs[1]), result_store.RESULT_FILE)) as f:
    saved = json.load(f)
  assert saved["clips"][0]["metrics"]["m"] is None
  assert saved == summary.results[1]
  assert saved["settings"] == dataclasses.asdict(jobs[1].settings)

  # Everything finished: a rerun samples nothing and touches no result file.
  before = _mtimes(tmp_path)
  again = FakeGenerator()
  summary = result_store.run_jobs(jobs, store, prints, again, progress=False)
  assert again.calls == [] and summary.generated == []
  assert summary.reused == [j.key for j in jobs]
  assert _mtimes(tmp_path) == before


def test_changed_inputs_regenerate_only_their_setting(tmp_path, jobs):
  store = result_store.ResultStore(str(tmp_path))
  prints = {job: sweep.fingerprint({"step": 100, "key": job.key}) for job in jobs}
  result_store.run_jobs(jobs, store, prints, FakeGenerator(), progress=False)
  prints[jobs[2]] = sweep.fingerprint({"step": 200, "key": jobs[2].key})  # e.g. a newer checkpoint
  generate = FakeGenerator()
  summary = result_store.run_jobs(jobs, store, prints, generate, progress=False)
  assert generate.calls == [jobs[2].key]
  assert summary.results[2]["fingerprint"] == prints[jobs[2]]


def test_a_staged_folder_without_its_result_is_dropped(tmp_path, jobs):
  store = result_store.ResultStore(str(tmp_path))
  with pytest.raises(RuntimeError, match="staged result has no result.json"):
    with store.staging(jobs[0]) as stage:
      (stage / "clip.txt").write_text("half done")
  assert not os.path.exists(store.path(jobs[0]))
  assert os.listdir(tmp_path / "videojam") == []  # the staging folder is gone too


def test_a_rerun_replaces_a_stale_result(tmp_path, jobs):
  store = result_store.ResultStore(str(tmp_path))
  result_store.run_jobs(jobs[:1], store, {jobs[0]: "v1"}, FakeGenerator(), progress=False)
  (store.path(jobs[0]) / "stale.txt").write_text("from v1")
  result_store.run_jobs(jobs[:1], store, {jobs[0]: "v2"}, FakeGenerator(), progress=False)
  assert sorted(os.listdir(store.path(jobs[0]))) == ["clip.txt", result_store.RESULT_FILE]
  assert store.load(jobs[0], "v2")["fingerprint"] == "v2"
  assert store.load(jobs[0], "v1") is None


def test_store_paths(tmp_path, jobs, monkeypatch):
  monkeypatch.chdir(tmp_path)
  local = result_store.ResultStore("runs")
  expected = os.path.join(str(tmp_path), "runs", *jobs[0].key.split("/"))
  assert os.fspath(local.path(jobs[0])) == expected
  # A bucket path stays a URI (making it absolute must not prefix the cwd).
  remote = result_store.ResultStore("gs://bucket/eval/runs")
  assert os.fspath(remote.path(jobs[0])) == f"gs://bucket/eval/runs/{jobs[0].key}"


def test_json_safe():
  value = {"a": (1, np.float32(0.5), float("nan")), 2: [np.int64(3), float("inf"), -float("inf")],
           "s": "x", "n": None}
  assert result_store.json_safe(value) == {"a": [1, 0.5, None], "2": [3, None, None], "s": "x",
                                           "n": None}
  assert type(result_store.json_safe(np.int64(3))) is int


def test_results_written_before_the_schedule_field_read_as_uniform(tmp_path, jobs):
  store = result_store.ResultStore(tmp_path)
  result_store.run_jobs(jobs[:1], store, {jobs[0]: "f"}, FakeGenerator(), progress=False)
  path = store.path(jobs[0]) / result_store.RESULT_FILE
  old = json.loads(path.read_text())
  del old["settings"]["schedule"]            # as an older version wrote it
  path.write_text(json.dumps(old))
  loaded = store.load(jobs[0], "f")
  assert loaded is not None and loaded["settings"]["schedule"] == "uniform"
  assert sweep.setting_name(jobs[0].settings).endswith("until1")     # the old folder name
