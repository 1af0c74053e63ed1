"""A blind study's trials, built from the clips an `evaluate` run already generated.

`build(config, eval_dir, arms, study_dir)` pairs the clips of arm A and arm B by
(prompt, seed), randomises which side each arm is on (balanced: half the pairs each
way), adds repeated pairs with their sides swapped and attention checks, and writes:

  study.json    what raters may see: question, labels, and per trial the media
                URLs and caption. No arm names, no settings, no kinds.
  key.json      what they may not: per trial its kind, the arm on each side, the
                expected answer of an attention check; the server's token secret;
                the build's fingerprint. The server never serves it.
  media/        every clip, copied under the hash of its bytes (so file names say
                nothing about the arm), and the frame-shuffled copies.

The study is built in a staging folder and renamed into place, so an interrupted build
leaves nothing. Building again into the same folder with the same inputs reuses it
(votes refer to its trial ids); other inputs are refused with an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import imageio.v3 as iio
import ml_collections
import numpy as np

from videojam_jax import files
from videojam_jax.data import video_io
from videojam_jax.evaluation import result_store

STUDY_FILE = "study.json"
KEY_FILE = "key.json"
MEDIA_DIR = "media"
RUNS_DIR = "runs"            # evaluation.runner.RUNS_DIR (not imported: the runner pulls in JAX)
CHOICES = ("left", "right", "tie")
KINDS = ("pair", "repeat", "same", "shuffled")
ATTENTION_KINDS = ("same", "shuffled")
MEDIA_NAME_CHARS = 24        # hex characters of a media file's sha256
TRIAL_ID_CHARS = 12          # random hex: ids say nothing about order or kind
SECRET_BYTES = 32
# Only the fields that define the trials; server and tally options may change between runs.
STUDY_FIELDS = ("title", "question", "instructions", "choices", "show_captions",
                "show_motion", "max_pairs", "repeat_fraction", "attention", "seed")


class StudyError(ValueError):
  """The study cannot be built or loaded as asked (the message says why and what to do)."""


@dataclasses.dataclass(frozen=True)
class Clip:
  """One clip of an arm: where its files are, and which prompt and seed made it."""
  prompt_index: int
  prompt: str
  seed: int
  video: str                 # absolute path of the MP4
  motion: str | None         # the motion panel's MP4, VideoJAM models only


@dataclasses.dataclass(frozen=True)
class Study:
  """A built study: the public part (`public`, study.json) and the secret one (`key`)."""
  study_dir: str
  public: dict[str, Any]
  key: dict[str, Any]

  @property
  def study_id(self) -> str:
    return self.public["study_id"]

  @property
  def trial_ids(self) -> list[str]:
    return [t["id"] for t in self.public["trials"]]

  def media_path(self, name: str) -> str:
    return os.path.join(self.study_dir, MEDIA_DIR, name)


def available_arms(eval_dir: str | os.PathLike) -> list[str]:
  """Every finished result of an evaluate workdir, as '<model>/<setting>'."""
  runs = os.path.join(eval_dir, RUNS_DIR)
  if not os.path.isdir(runs):
    raise StudyError(f"{eval_dir} is not an `evaluate` workdir: it has no {RUNS_DIR}/ folder")
  keys = []
  for model in sorted(os.listdir(runs)):
    model_dir = os.path.join(runs, model)
    if model.startswith(".") or not os.path.isdir(model_dir):
      continue
    for setting in sorted(os.listdir(model_dir)):
      if os.path.isfile(os.path.join(model_dir, setting, result_store.RESULT_FILE)):
        keys.append(f"{model}/{setting}")
  return keys


def resolve_arm(eval_dir: str | os.PathLike, name: str) -> str:
  """The result key an arm name means: a full '<model>/<setting>', or a model with one
  finished setting."""
  keys = available_arms(eval_dir)
  if name in keys:
    return name
  matches = [k for k in keys if k.split("/")[0] == name]
  if len(matches) == 1:
    return matches[0]
  listing = "\n  ".join(keys) or "(none)"
  if matches:
    raise StudyError(f"arm {name!r} has {len(matches)} settings in {eval_dir}; name one of:"
                     f"\n  {listing}")
  raise StudyError(f"no arm {name!r} in {eval_dir}; its finished results are:\n  {listing}")


def load_clips(eval_dir: str | os.PathLike, key: str) -> dict[tuple[int, int], Clip]:
  """An arm's clips by (prompt_index, seed), with their files checked to exist."""
  folder = os.path.join(eval_dir, RUNS_DIR, *key.split("/"))
  with open(os.path.join(folder, result_store.RESULT_FILE), encoding="utf-8") as f:
    result = json.load(f)
  clips = {}
  for record in result.get("clips", []):
    try:
      video = os.path.join(folder, record["video"])
      motion = os.path.join(folder, record["motion"]) if record.get("motion") else None
      clip = Clip(int(record["prompt_index"]), str(record["prompt"]), int(record["seed"]),
                  video, motion)
    except (KeyError, TypeError, ValueError) as e:
      raise StudyError(f"{key}: malformed clip record in {result_store.RESULT_FILE}: "
                       f"{record!r} ({e})") from e
    for path in filter(None, (clip.video, clip.motion)):
      if not os.path.isfile(path):
        raise StudyError(f"{key}: clip file {path} is missing (re-run evaluate on {eval_dir})")
    clips[(clip.prompt_index, clip.seed)] = clip
  if not clips:
    raise StudyError(f"{key}: its result lists no clips")
  return clips


def _fingerprint(config: ml_collections.ConfigDict, eval_dir: str, arms: Sequence[str]) -> str:
  """What the trials depend on: the study fields, the arms, and their results' inputs."""
  results = {}
  for key in arms:
    path = os.path.join(eval_dir, RUNS_DIR, *key.split("/"), result_store.RESULT_FILE)
    with open(path, encoding="utf-8") as f:
      results[key] = json.load(f).get("fingerprint")
  study = {field: config[field] for field in STUDY_FIELDS}
  study = json.loads(ml_collections.ConfigDict(study).to_json())
  return files.json_digest({"study": study, "arms": list(arms), "results": results})


def _media_name(path: str, store: str) -> str:
  """Copies a file into the media folder under the hash of its bytes; returns the name."""
  with open(path, "rb") as f:
    data = f.read()
  name = hashlib.sha256(data).hexdigest()[:MEDIA_NAME_CHARS] + os.path.splitext(path)[1]
  target = os.path.join(store, name)
  if not os.path.exists(target):
    files.atomic_write(target, data)
  return name


def _derangement(rng: np.random.Generator, n: int) -> np.ndarray:
  """A permutation of range(n) that moves every index (n >= 2): visibly shuffled frames."""
  if n < 2:
    raise StudyError("a shuffled-frames check needs clips of at least 2 frames")
  while True:
    order = rng.permutation(n)
    if np.all(order != np.arange(n)):
      return order


def _shuffled_copy(path: str, order_rng: np.random.Generator, store: str,
                   order: np.ndarray | None = None) -> tuple[str, np.ndarray]:
  """A copy of an MP4 with its frames in a random order, at the same frame rate and size."""
  frames = iio.imread(path, plugin="pyav")
  fps = float(iio.immeta(path, plugin="pyav")["fps"])
  if order is None:
    order = _derangement(order_rng, len(frames))
  if len(order) != len(frames):
    raise StudyError(f"{path}: {len(frames)} frames, its video has {len(order)}")
  tmp = os.path.join(store, f".shuffled-{os.getpid()}.mp4")
  try:
    video_io.write_video(tmp, frames[order], fps, min_side=1)   # already at display size
    return _media_name(tmp, store), order
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _check_config(config: ml_collections.ConfigDict) -> None:
  if not 0.0 <= float(config.repeat_fraction) <= 1.0:
    raise StudyError(f"repeat_fraction={config.repeat_fraction} must be in [0, 1]")
  if not 0.0 <= float(config.attention.fraction) <= 1.0:
    raise StudyError(f"attention.fraction={config.attention.fraction} must be in [0, 1]")
  unknown = set(config.attention.kinds) - set(ATTENTION_KINDS)
  if unknown or (config.attention.fraction > 0 and not config.attention.kinds):
    raise StudyError(f"attention.kinds={tuple(config.attention.kinds)}: choose from "
                     f"{ATTENTION_KINDS}")
  if int(config.max_pairs) < 0:
    raise StudyError(f"max_pairs={config.max_pairs} must be >= 0 (0: every pair)")
  if set(config.choices.keys()) != set(CHOICES):
    raise StudyError(f"choices must label exactly {CHOICES}, got {tuple(config.choices.keys())}")


def _side(clip: Clip, store: str, show_motion: bool) -> dict[str, str | None]:
  return {"video": _media_name(clip.video, store),
          "motion": _media_name(clip.motion, store) if show_motion else None}


def _pairs(config: ml_collections.ConfigDict, clips_a: Mapping[tuple[int, int], Clip],
           clips_b: Mapping[tuple[int, int], Clip], rng: np.random.Generator
           ) -> tuple[list[tuple[int, int]], int]:
  """The (prompt_index, seed) of both arms, maybe subsampled; and how many only one has."""
  shared = sorted(set(clips_a) & set(clips_b))
  unpaired = len(set(clips_a) ^ set(clips_b))
  if not shared:
    raise StudyError("the two arms share no (prompt, seed): evaluate them with the same "
                     "prompts and seeds")
  for pair in shared:
    if clips_a[pair].prompt != clips_b[pair].prompt:
      raise StudyError(f"prompt {pair[0]} differs between the arms ({clips_a[pair].prompt!r} vs "
                       f"{clips_b[pair].prompt!r}): they were evaluated on different prompts")
  if config.max_pairs and config.max_pairs < len(shared):
    chosen = rng.choice(len(shared), size=int(config.max_pairs), replace=False)
    shared = [shared[i] for i in sorted(chosen)]
  return shared, unpaired


def _balanced_flags(rng: np.random.Generator, n: int) -> list[bool]:
  """n booleans, half True (one more when n is odd, chosen at random), in random order."""
  flags = [True] * (n // 2) + [False] * (n // 2)
  if n % 2:
    flags.append(bool(rng.integers(2)))
  return [bool(f) for f in rng.permutation(flags)] if flags else []


def build(config: ml_collections.ConfigDict, eval_dir: str | os.PathLike, arms: Sequence[str],
          study_dir: str | os.PathLike, *, progress: bool = True) -> Study:
  """Builds the study of arms (A, B) of an evaluate workdir into study_dir (see the module
  docstring), or returns the study already there if it was built from the same inputs."""
  _check_config(config)
  eval_dir, study_dir = os.path.abspath(eval_dir), os.path.abspath(study_dir)
  if len(arms) != 2:
    raise StudyError(f"a pairwise study compares two arms, got {len(arms)}: {list(arms)}")
  keys = [resolve_arm(eval_dir, a) for a in arms]
  if keys[0] == keys[1]:
    raise StudyError(f"both arms are {keys[0]}")
  fingerprint = _fingerprint(config, eval_dir, keys)
  if os.path.exists(os.path.join(study_dir, STUDY_FILE)):
    study = load(study_dir)
    if study.key["fingerprint"] != fingerprint:
      raise StudyError(
          f"{study_dir} holds a different study (arms {study.key['arms']}, or other clips or "
          "study settings); its votes stay there. Choose a new --study_dir for this one.")
    logging.info("reusing the study in %s (same arms, clips and settings)", study_dir)
    return study
  if os.path.isdir(study_dir) and os.listdir(study_dir):
    raise StudyError(f"{study_dir} is not empty and holds no study; choose an empty or new "
                     "folder (nothing there was changed)")

  clips_a, clips_b = load_clips(eval_dir, keys[0]), load_clips(eval_dir, keys[1])
  if config.show_motion:
    for key, clips in zip(keys, (clips_a, clips_b)):
      if any(c.motion is None for c in clips.values()):
        raise StudyError(f"show_motion: arm {key} has no motion panels (a pixel-only model); "
                         "showing one arm's only would reveal which is which")
  rng = np.random.default_rng(int(config.seed))
  pairs, unpaired = _pairs(config, clips_a, clips_b, rng)
  if unpaired:
    logging.warning("%d (prompt, seed) clip(s) are in only one arm and are left out", unpaired)

  parent = os.path.dirname(study_dir)
  os.makedirs(parent, exist_ok=True)
  stage = os.path.join(parent, f".staging-{os.path.basename(study_dir)}.{os.getpid()}")
  shutil.rmtree(stage, ignore_errors=True)
  store = os.path.join(stage, MEDIA_DIR)
  os.makedirs(store)
  try:
    trials = _make_trials(config, keys, clips_a, clips_b, pairs, rng, store, progress)
    order = rng.permutation(len(trials))
    trial_ids = set()
    public_trials, key_trials = [], {}
    for index in order:
      public, secret = trials[index]
      while (trial_id := "t" + secrets.token_hex(TRIAL_ID_CHARS // 2)) in trial_ids:
        pass
      trial_ids.add(trial_id)
      public_trials.append({"id": trial_id, **public})
      key_trials[trial_id] = secret
    for trial in key_trials.values():   # repeats point at their original's new id
      if "repeat_of" in trial:
        trial["repeat_of"] = next(i for i, t in key_trials.items()
                                  if t["kind"] == "pair" and t["pair"] == trial["pair"])
    study_id = "s" + fingerprint[:10]
    public = {"study_id": study_id, "title": config.title, "question": config.question,
              "instructions": config.instructions, "choices": dict(config.choices),
              "show_captions": bool(config.show_captions), "show_motion": bool(config.show_motion),
              "trials": public_trials}
    key = {"study_id": study_id, "fingerprint": fingerprint, "eval_dir": eval_dir,
           "arms": keys, "secret": secrets.token_hex(SECRET_BYTES), "trials": key_trials,
           "num_pairs": len(pairs), "unpaired_clips": unpaired,
           "config": json.loads(config.to_json())}
    files.atomic_write(os.path.join(stage, KEY_FILE), json.dumps(key, indent=1))
    files.atomic_write(os.path.join(stage, STUDY_FILE), json.dumps(public, indent=1))
    if os.path.isdir(study_dir):
      os.rmdir(study_dir)      # empty (checked above)
    os.replace(stage, study_dir)
  finally:
    shutil.rmtree(stage, ignore_errors=True)
  study = load(study_dir)
  counts = {k: sum(t["kind"] == k for t in key["trials"].values()) for k in KINDS}
  logging.info("built study %s in %s: %s", study.study_id, study_dir, counts)
  return study


def _make_trials(config: ml_collections.ConfigDict, keys: Sequence[str],
                 clips_a: Mapping[tuple[int, int], Clip], clips_b: Mapping[tuple[int, int], Clip],
                 pairs: Sequence[tuple[int, int]], rng: np.random.Generator, store: str,
                 progress: bool) -> list[tuple[dict[str, Any], dict[str, Any]]]:
  """(public, secret) halves of every trial, in build order (shuffled by the caller)."""
  show_motion, show_caption = bool(config.show_motion), bool(config.show_captions)
  trials = []

  def add(kind: str, pair: tuple[int, int], left: tuple[str, dict], right: tuple[str, dict],
          **extra: Any) -> None:
    prompt = clips_a[pair].prompt
    trials.append(({"caption": prompt if show_caption else None,
                    "left": left[1], "right": right[1]},
                   {"kind": kind, "pair": list(pair), "prompt": prompt,
                    "left_arm": left[0], "right_arm": right[0], **extra}))

  a_left = _balanced_flags(rng, len(pairs))
  sides = {}
  for pair, flag in zip(pairs, a_left):
    a = (keys[0], _side(clips_a[pair], store, show_motion))
    b = (keys[1], _side(clips_b[pair], store, show_motion))
    sides[pair] = (a, b) if flag else (b, a)
    add("pair", pair, *sides[pair])
  num_repeats = round(float(config.repeat_fraction) * len(pairs))
  for i in sorted(rng.choice(len(pairs), size=num_repeats, replace=False)):
    left, right = sides[pairs[i]]
    add("repeat", pairs[i], right, left, repeat_of=None)    # sides swapped
  num_checks = round(float(config.attention.fraction) * len(pairs))
  if config.attention.fraction > 0:
    num_checks = max(1, num_checks)
  check_pairs = rng.choice(len(pairs), size=num_checks, replace=num_checks > len(pairs))
  intact_left = _balanced_flags(rng, num_checks)
  for n, i in enumerate(check_pairs):
    pair = pairs[i]
    arm = int(rng.integers(2))
    clip = (clips_a, clips_b)[arm][pair]
    side = (keys[arm], _side(clip, store, show_motion))
    kind = config.attention.kinds[n % len(config.attention.kinds)]
    if kind == "same":
      add("same", pair, side, side, expected="tie")
      continue
    video, order = _shuffled_copy(clip.video, rng, store)
    motion = _shuffled_copy(clip.motion, rng, store, order)[0] if show_motion else None
    broken = (f"{keys[arm]} (frames shuffled)", {"video": video, "motion": motion})
    if intact_left[n]:
      add("shuffled", pair, side, broken, expected="left")
    else:
      add("shuffled", pair, broken, side, expected="right")
    if progress:
      logging.info("attention check %d/%d written", n + 1, num_checks)
  return trials


_STUDY_ID = re.compile(r"^s[0-9a-f]+$")


def load(study_dir: str | os.PathLike) -> Study:
  """The study built in study_dir (study.json and key.json, checked to agree)."""
  study_dir = os.path.abspath(study_dir)
  try:
    with open(os.path.join(study_dir, STUDY_FILE), encoding="utf-8") as f:
      public = json.load(f)
    with open(os.path.join(study_dir, KEY_FILE), encoding="utf-8") as f:
      key = json.load(f)
  except FileNotFoundError as e:
    raise StudyError(f"{study_dir} holds no study ({e.filename} is missing); build one with "
                     "--eval_dir and --arms") from e
  except json.JSONDecodeError as e:
    raise StudyError(f"{study_dir}: a study file is corrupt ({e}); rebuild into a new folder") from e
  ids = [t["id"] for t in public.get("trials", [])]
  if (public.get("study_id") != key.get("study_id") or not _STUDY_ID.match(public["study_id"])
      or set(ids) != set(key.get("trials", {})) or len(ids) != len(set(ids))):
    raise StudyError(f"{study_dir}: {STUDY_FILE} and {KEY_FILE} do not belong together")
  return Study(study_dir, public, key)
