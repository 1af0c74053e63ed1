"""Sweep expansion, skipping settings a model cannot use, setting names and fingerprints."""

import dataclasses
import hashlib
import json

import pytest

from configs import sampling
from videojam_jax.sampling import sampler as sampler_lib
from videojam_jax.evaluation import sweep

# configs/sampling.py's settings (the one place their defaults live), 2 steps.
BASE = sampler_lib.settings_from_config(sampling.get_config(), num_steps=2, text_scale=5.0,
                                        motion_scale=3.0)


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


def test_fingerprint_is_the_sorted_json_sha256_prefix():
  # Stored results carry this value: another recipe would redo every finished sweep.
  inputs = {"step": 100, "seeds": (0, 1), "settings": {"b": 1.5, "a": None}, "workdir": BASE}
  text = json.dumps(inputs, sort_keys=True, default=str)
  assert sweep.fingerprint(inputs) == hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
  assert sweep.fingerprint({"a": 1, "b": 2}) == sweep.fingerprint({"b": 2, "a": 1})
  assert sweep.fingerprint({"step": 100}) != sweep.fingerprint({"step": 200})
