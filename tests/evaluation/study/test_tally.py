"""Tallies: intervals, kappa, attention flags, and win rates from known votes."""

import json
import math
import os

import numpy as np
import pytest

from configs import study as study_config
from tests.evaluation.study.conftest import ARM_A, ARM_B
from videojam_jax.evaluation.study import tally
from videojam_jax.evaluation.study import trials
from videojam_jax.evaluation.study import votes as votes_lib


def test_wilson_interval_matches_known_values():
  low, high = tally.wilson_interval(8, 10, 0.95)       # textbook: [0.490, 0.943]
  assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
  assert tally.wilson_interval(0, 5)[0] == pytest.approx(0.0, abs=1e-12)
  assert all(math.isnan(x) for x in tally.wilson_interval(0, 0))


def test_fleiss_kappa_matches_a_worked_example():
  # Fleiss (1971)-style check: perfect agreement -> 1; a split table -> the formula's value.
  assert tally.fleiss_kappa(np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3]])) == pytest.approx(1.0)
  counts = np.array([[2, 1, 0], [1, 1, 1], [0, 3, 0], [3, 0, 0]])
  n = 3
  p_i = ((counts * (counts - 1)).sum(1) / (n * (n - 1))).mean()
  p_j = counts.sum(0) / counts.sum()
  expected = (p_i - (p_j ** 2).sum()) / (1 - (p_j ** 2).sum())
  assert tally.fleiss_kappa(counts) == pytest.approx(expected)


def test_motion_kind_from_captions():
  assert tally.motion_kind("a red circle falling under gravity, on a mottled background") == \
      "falling"
  assert tally.motion_kind("waves at dusk") == "other"


def _vote(rater, trial, choice):
  return {"study": STUDY_ID[0], "rater": rater, "trial": trial, "choice": choice,
          "client_ms": 1500.0, "server_s": 2.0, "time": "2026-12-04T00:00:00+00:00"}


STUDY_ID = [None]


def test_tally_of_known_votes(eval_dir, tmp_path):
  config = study_config.get_config()
  config.attention.fraction = 0.5
  config.repeat_fraction = 0.5
  study = trials.build(config, eval_dir, [ARM_A, ARM_B], tmp_path / "s")
  STUDY_ID[0] = study.study_id
  lines = []
  for trial_id, t in study.key["trials"].items():
    # alice: always arm B, attention checks right. carol: the same. bob: always "left".
    b_side = "left" if t["left_arm"] == ARM_B else "right"
    good = t.get("expected", b_side)
    lines += [_vote("alice", trial_id, good), _vote("carol", trial_id, good),
              _vote("bob", trial_id, "left")]
  lines.append(dict(_vote("alice", "tnosuchtrial", "left")))
  with open(os.path.join(study.study_dir, votes_lib.VOTES_FILE), "w") as f:
    f.writelines(json.dumps(v) + "\n" for v in lines)

  result = tally.tally(study)
  raters = {r["rater"]: r for r in result["raters"]}
  assert raters["bob"]["flagged"] and not raters["alice"]["flagged"]
  assert result["counted_raters"] == ["alice", "carol"] and result["foreign_votes"] == 1
  overall = result["rows"][0]
  num_pair_votes = 2 * sum(t["kind"] in ("pair", "repeat") for t in study.key["trials"].values())
  assert overall["votes"] == num_pair_votes and overall["b_wins"] == num_pair_votes
  assert overall["a_win_rate"] == 0.0 and overall["ties"] == 0
  assert overall["a_win_ci_high"] == pytest.approx(tally.wilson_interval(0, num_pair_votes)[1])
  assert result["agreement"]["pairwise_agreement"] == 1.0
  assert result["agreement"]["self_consistency"] == 1.0
  assert sum(r["votes"] for r in result["rows"][1:]) in (0, num_pair_votes)

  with_bob = tally.tally(study, exclude_flagged=False)["rows"][0]
  assert with_bob["votes"] == num_pair_votes * 3 // 2
  assert 0 < with_bob["a_win_rate"] < 1 and with_bob["left_share"] > 0.5

  paths = tally.write(study.study_dir, result)
  rows = open(paths["tally.csv"]).read().splitlines()
  assert rows[0].startswith("scope,arm_a,arm_b,votes") and rows[1].startswith("all prompts,")
  assert "| bob |" in open(paths["tally.md"]).read()
  assert open(paths["tally.png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert "<table>" in open(paths["index.html"]).read()
