"""Sweep expansion, skipping settings a model cannot use, and resumable results."""

import dataclasses
import json
import os

import pytest

from videojam_jax.sampling import sampler as sampler_lib
from videojam_jax.evaluation import sweep

BASE = sampler_lib.SamplerSettings(num_steps=2, text_scale=5.0, motion_scale=3.0)


def test_expand_is_the_product_in_order():
  settings = sweep.expand(BASE, {"num_steps": (2, 4), "text_scale": (1.0, 5.0)})
  assert [(s.num_steps, s.text_scale) for s in settings] == [(2, 1.0), (2, 5.0), (4, 1.0), (4, 5.0)]
  assert all(s.guidance == "inner" and s.motion_scale == 3.0 for s in settings)
  # A bare value is a one-point axis; ints are cast to the field's float type.
  (one,) = sweep.expand(BASE, {"motion_scale": 2})
  assert one.motion_scale == 2.0 and isinstance(one.motion_scale, float)


def test_settings_that_ignore_a_field_collapse():
  settings = sweep.expand(BASE, {"guidance": ("none", "cfg", "inner"), "motion_scale": (1.0, 3.0)})
  # CFG ignores w2 (it is Inner-Guidance at w2 = 0); no guidance ignores both scales.
  assert [(s.guidance, s.text_scale, s.motion_scale) for s in settings] == [
      ("none", 0.0, 0.0), ("cfg", 5.0, 0.0), ("inner", 5.0, 1.0), ("inner", 5.0, 3.0)]
  assert len({sweep.setting_name(s) for s in settings}) == 4


def test_bad_sweeps_are_rejected():
  with pytest.raises(sweep.SweepError, match="cannot sweep .*'batched'"):
    sweep.expand(BASE, {"batched": (True, False)})
  with pytest.raises(sweep.SweepError, match="no values"):
    sweep.expand(BASE, {"text_scale": ()})
  with pytest.raises(sampler_lib.GuidanceError, match="num_steps"):
    sweep.expand(BASE, {"num_steps": (0,)})
  with pytest.raises(sweep.SweepError, match="model name"):
    sweep.plan({"../x": True}, [BASE])


def test_plan_skips_inner_guidance_on_a_baseline(caplog):
  settings = sweep.expand(BASE, {"guidance": ("cfg", "inner"), "motion_scale": (1.0, 3.0)})
  jobs, skipped = sweep.plan({"baseline": False, "videojam": True}, settings)
  assert [(j.model, j.settings.guidance, j.settings.motion_scale) for j in jobs] == [
      ("baseline", "cfg", 0.0), ("videojam", "cfg", 0.0),
      ("videojam", "inner", 1.0), ("videojam", "inner", 3.0)]
  assert [(s.model, s.settings.motion_scale) for s in skipped] == [("baseline", 1.0), ("baseline", 3.0)]
  assert all("needs a VideoJAM model" in s.reason for s in skipped)
  assert "skipping inner_w1-5_w2-1" in caplog.text


def test_setting_names_are_exact():
  a = dataclasses.replace(BASE, text_scale=1.0)
  b = dataclasses.replace(BASE, text_scale=1.0000001)
  assert sweep.setting_name(a) == "inner_w1-1_w2-3_n2_euler_shift1_until1"
  assert sweep.setting_name(a) != sweep.setting_name(b)


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
  store = sweep.ResultStore(str(tmp_path))
  prints = {job: "v1" for job in jobs}

  # Interrupted during the second setting: the first is kept, nothing else is.
  fail = FakeGenerator(fail_on=jobs[1].key)
  with pytest.raises(KeyboardInterrupt):
    sweep.run_jobs(jobs, store, prints, fail, progress=False)
  assert fail.calls == [jobs[0].key, jobs[1].key]
  assert store.load(jobs[0], "v1") is not None
  assert all(store.load(j, "v1") is None for j in jobs[1:])
  assert not any(".staging" in p for p in _mtimes(tmp_path))

  # A folder left by a killed process (no cleanup ran) is not a result.
  (tmp_path / "videojam" / f".staging-{jobs[2].key.split('/')[1]}.999").mkdir()

  generate = FakeGenerator()
  summary = sweep.run_jobs(jobs, store, prints, generate, progress=False)
  assert generate.calls == [j.key for j in jobs[1:]]
  assert summary.reused == [jobs[0].key] and summary.generated == generate.calls
  assert [r["key"] for r in summary.results] == [j.key for j in jobs]
  assert not any(".staging" in p for p in _mtimes(tmp_path))
  # Results are strict JSON (NaN -> null) and read back exactly as returned.
  with open(os.path.join(store.path(jobs[1]), sweep.RESULT_FILE)) as f:
    saved = json.load(f)
  assert saved["clips"][0]["metrics"]["m"] is None
  assert saved == summary.results[1]
  assert saved["settings"] == dataclasses.asdict(jobs[1].settings)

  # Everything finished: a rerun samples nothing and touches no result file.
  before = _mtimes(tmp_path)
  again = FakeGenerator()
  summary = sweep.run_jobs(jobs, store, prints, again, progress=False)
  assert again.calls == [] and summary.generated == []
  assert summary.reused == [j.key for j in jobs]
  assert _mtimes(tmp_path) == before


def test_changed_inputs_regenerate_only_their_setting(tmp_path, jobs):
  store = sweep.ResultStore(str(tmp_path))
  prints = {job: sweep.fingerprint({"step": 100, "key": job.key}) for job in jobs}
  sweep.run_jobs(jobs, store, prints, FakeGenerator(), progress=False)
  prints[jobs[2]] = sweep.fingerprint({"step": 200, "key": jobs[2].key})  # e.g. a newer checkpoint
  generate = FakeGenerator()
  summary = sweep.run_jobs(jobs, store, prints, generate, progress=False)
  assert generate.calls == [jobs[2].key]
  assert summary.results[2]["fingerprint"] == prints[jobs[2]]
  assert sweep.fingerprint({"a": 1, "b": 2}) == sweep.fingerprint({"b": 2, "a": 1})
