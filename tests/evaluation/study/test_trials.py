"""Building a study: pairs, balanced sides, repeats, attention checks, blinding, reuse."""

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest

from configs import study as study_config
from tests.evaluation.study.conftest import ARM_A, ARM_B, NUM_PROMPTS, write_eval_dir
from videojam_jax.evaluation.study import trials


def config(**overrides):
  c = study_config.get_config()
  c.attention.fraction = 0.34
  c.repeat_fraction = 0.34
  for k, v in overrides.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  return c


def test_builds_balanced_blind_trials(eval_dir, tmp_path):
  study = trials.build(config(), eval_dir, ["baseline", ARM_B], tmp_path / "s")
  key = study.key
  kinds = [t["kind"] for t in key["trials"].values()]
  assert kinds.count("pair") == NUM_PROMPTS
  assert kinds.count("repeat") == 2 and kinds.count("same") + kinds.count("shuffled") == 2
  assert key["arms"] == [ARM_A, ARM_B]
  pairs = [t for t in key["trials"].values() if t["kind"] == "pair"]
  a_left = sum(t["left_arm"] == ARM_A for t in pairs)
  assert a_left == NUM_PROMPTS // 2                       # balanced
  for t in key["trials"].values():
    if t["kind"] == "repeat":                             # the same pair, sides swapped
      first = key["trials"][t["repeat_of"]]
      assert first["pair"] == t["pair"] and first["left_arm"] == t["right_arm"]
  # Nothing raters can fetch names an arm, a model or a setting.
  public = (tmp_path / "s" / trials.STUDY_FILE).read_text()
  for secret in (ARM_A, ARM_B, "baseline", "videojam", "inner", "cfg", "same", "shuffled"):
    assert secret not in public
    assert not any(secret in n for n in os.listdir(tmp_path / "s" / trials.MEDIA_DIR))
  for t in study.public["trials"]:
    for side in ("left", "right"):
      assert os.path.isfile(study.media_path(t[side]["video"])) and t[side]["motion"] is None


def test_attention_checks_show_the_same_clip_or_its_shuffled_frames(eval_dir, tmp_path):
  study = trials.build(config(**{"attention.fraction": 1.0}), eval_dir, [ARM_A, ARM_B],
                       tmp_path / "s")
  public = {t["id"]: t for t in study.public["trials"]}
  seen = set()
  for trial_id, t in study.key["trials"].items():
    left, right = public[trial_id]["left"]["video"], public[trial_id]["right"]["video"]
    if t["kind"] == "same":
      assert left == right and t["expected"] == "tie"
    elif t["kind"] == "shuffled":
      intact, broken = (left, right) if t["expected"] == "left" else (right, left)
      a = iio.imread(study.media_path(intact), plugin="pyav").astype(int)
      b = iio.imread(study.media_path(broken), plugin="pyav").astype(int)
      assert a.shape == b.shape                          # same size and length: not a giveaway
      # Every shuffled frame is one of the intact clip's frames, none at its own place.
      match = np.abs(b[:, None] - a[None]).mean(axis=(2, 3, 4)).argmin(axis=1)
      assert sorted(match) == list(range(len(a))) and np.all(match != np.arange(len(a)))
    seen.add(t["kind"])
  assert seen == {"pair", "repeat", "same", "shuffled"}


def test_rebuild_reuses_or_refuses(eval_dir, tmp_path):
  first = trials.build(config(), eval_dir, [ARM_A, ARM_B], tmp_path / "s")
  again = trials.build(config(), eval_dir, [ARM_A, ARM_B], tmp_path / "s")
  assert again.trial_ids == first.trial_ids and again.key["secret"] == first.key["secret"]
  (tmp_path / "s" / "votes.jsonl").write_text("kept\n")
  with pytest.raises(trials.StudyError, match="different study"):
    trials.build(config(question="Which is sharper?"), eval_dir, [ARM_A, ARM_B], tmp_path / "s")
  assert (tmp_path / "s" / "votes.jsonl").read_text() == "kept\n"
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("x")
  with pytest.raises(trials.StudyError, match="not empty"):
    trials.build(config(), eval_dir, [ARM_A, ARM_B], tmp_path / "other")
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".staging")]


@pytest.mark.parametrize("arms, message", [
    (["videojam", ARM_A], "has 2 settings"),
    (["nope", ARM_A], "no arm 'nope'"),
    ([ARM_A, ARM_A], "both arms"),
    ([ARM_A], "two arms"),
])
def test_bad_arms_get_clear_errors(tmp_path, arms, message):
  root = write_eval_dir(str(tmp_path / "eval"), num_prompts=2)
  extra = tmp_path / "eval" / "runs" / "videojam" / "cfg_w1-5_w2-0_n25_euler_shift1_until1"
  extra.mkdir()
  (extra / "result.json").write_text(json.dumps({"clips": []}))
  with pytest.raises(trials.StudyError, match=message):
    trials.build(config(), root, arms, tmp_path / "s")
  assert not (tmp_path / "s").exists()


def test_bad_config_and_inputs_get_clear_errors(eval_dir, tmp_path):
  with pytest.raises(trials.StudyError, match="pixel-only"):
    trials.build(config(show_motion=True), eval_dir, [ARM_A, ARM_B], tmp_path / "s")
  with pytest.raises(trials.StudyError, match="attention.kinds"):
    trials.build(config(**{"attention.kinds": ("blurry",)}), eval_dir, [ARM_A, ARM_B],
                 tmp_path / "s")
  with pytest.raises(trials.StudyError, match="not an `evaluate` workdir"):
    trials.build(config(), tmp_path, [ARM_A, ARM_B], tmp_path / "s")
  with pytest.raises(trials.StudyError, match="holds no study"):
    trials.load(tmp_path)


def test_subset_and_unpaired_clips(tmp_path):
  root = write_eval_dir(str(tmp_path / "eval"))
  result_path = tmp_path / "eval" / "runs" / ARM_B.split("/")[0] / ARM_B.split("/")[1] / "result.json"
  result = json.loads(result_path.read_text())
  result["clips"] = result["clips"][:-1]          # arm B lacks the last prompt
  result_path.write_text(json.dumps(result))
  study = trials.build(config(max_pairs=3, repeat_fraction=0.0,
                              **{"attention.fraction": 0.0}), root, [ARM_A, ARM_B],
                       tmp_path / "s")
  assert study.key["unpaired_clips"] == 1 and study.key["num_pairs"] == 3
  assert len(study.trial_ids) == 3
  assert all(t["pair"][0] < NUM_PROMPTS - 1 for t in study.key["trials"].values())


def test_motion_panels_of_two_videojam_arms(tmp_path):
  from tests.evaluation.study.conftest import ARM_C  # pylint: disable=g-import-not-at-top
  root = write_eval_dir(str(tmp_path / "eval"), num_prompts=3,
                        arms=((ARM_B, True), (ARM_C, True)))
  study = trials.build(config(show_motion=True, **{"attention.fraction": 1.0,
                                                    "attention.kinds": ("shuffled",)}),
                       root, [ARM_B, ARM_C], tmp_path / "s")
  public = {t["id"]: t for t in study.public["trials"]}
  for trial_id, t in study.key["trials"].items():
    sides = [public[trial_id][s] for s in ("left", "right")]
    assert all(os.path.isfile(study.media_path(s["motion"])) for s in sides)
    if t["kind"] == "shuffled":   # the broken side's motion panel is shuffled the same way
      intact, broken = sides if t["expected"] == "left" else sides[::-1]
      video = [iio.imread(study.media_path(s["video"]), plugin="pyav").astype(int)
               for s in (intact, broken)]
      motion = [iio.imread(study.media_path(s["motion"]), plugin="pyav").astype(int)
                for s in (intact, broken)]
      order_v = np.abs(video[1][:, None] - video[0][None]).mean(axis=(2, 3, 4)).argmin(axis=1)
      # (Motion panels repeat their first frame, so match them by the video's order.)
      assert np.abs(motion[1] - motion[0][order_v]).mean() < 8.0   # x264 of a sharp colour wheel
      assert broken["motion"] != intact["motion"]
