"""End to end with precomputed caption embeddings, through `python -m videojam_jax.train`.

- A run with model.text.source="precomputed" trains, samples its eval prompts (the
  sampler looks them up in the same .npz as training: one caption path) and finishes.
  Before, sampling only tokenised builtin captions and such a run crashed at its
  first sample.
- The same run with one caption's embedding poisoned (NaN) stops with a clear error
  naming the step whose batch held that caption, and leaves the last good
  checkpoint intact and loadable.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from data_pipelines import synthetic_dataset
from tests.conftest import REPO
from tests.conftest import subprocess_env
from videojam_jax.data import pipeline
from videojam_jax.data import text as text_lib
from videojam_jax.training import checkpoints

MAX_LENGTH, DIM = 8, 16
CHECKPOINT_EVERY, NUM_STEPS = 2, 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  config = tiny.get_config()
  config.data.dataset_dir = str(tmp_path_factory.mktemp("data"))
  synthetic_dataset.build(config)
  return config.data.dataset_dir


def write_embeddings(path, captions, poisoned=None):
  rng = np.random.default_rng(0)
  embeddings = rng.standard_normal((len(captions), MAX_LENGTH, DIM)).astype(np.float32)
  lengths = rng.integers(1, MAX_LENGTH + 1, len(captions))
  masks = np.arange(MAX_LENGTH)[None] < lengths[:, None]
  if poisoned is not None:
    embeddings[captions.index(poisoned)] = np.nan
  np.savez(path, captions=np.asarray(captions), embeddings=embeddings, masks=masks)


def command(dataset, workdir, embeddings):
  return [sys.executable, "-m", "videojam_jax.train", "--config", "configs/tiny.py",
          f"--workdir={workdir}", f"--config.data.dataset_dir={dataset}",
          "--config.compilation_cache_dir=", "--config.model.text.source=precomputed",
          # Constant LR and tensorboardX: see tests/test_train_wan.py's run().
          "--config.optim.schedule=constant", "--config.train.metric_writer=tensorboardx",
          f"--config.model.text.max_length={MAX_LENGTH}",
          f"--config.model.text.embedding_dim={DIM}", f"--config.data.text_embeddings={embeddings}",
          f"--config.train.num_steps={NUM_STEPS}", "--config.train.log_every=5",
          f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
          f"--config.evals.samples.every_steps={NUM_STEPS}"]


def all_captions(dataset):
  return sorted(set(pipeline.read_captions(dataset, "train", 10**6)
                    + pipeline.read_captions(dataset, "validation", 10**6)))


def test_precomputed_text_run_samples_and_finishes(dataset, tmp_path):
  embeddings = tmp_path / "emb.npz"
  write_embeddings(embeddings, all_captions(dataset))
  workdir = tmp_path / "run"
  result = subprocess.run(command(dataset, workdir, embeddings), cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  out = workdir / "samples" / f"step_{NUM_STEPS:06d}"
  assert sorted(os.listdir(out)) == ["captions.txt", "grid.png", "sample_00.mp4", "sample_01.mp4"]
  assert re.search(rf"\[{NUM_STEPS}\] samples/.*warping_error=", result.stderr)
  assert sorted(os.listdir(workdir / "checkpoints"), key=int)[-1] == str(NUM_STEPS)


def first_step_with(dataset, caption):
  """The step (1-based) whose batch first holds `caption`, read as the trainer reads."""
  config = tiny.get_config()
  config.data.dataset_dir = dataset
  config.model.text.source = "builtin"   # the order of clips does not depend on the text
  captions = text_lib.CaptionInputs(config.model.text)
  it = iter(pipeline.create_dataset(config.data, "train", batch_size=config.train.batch_size,
                                    captions=captions))
  ids_of = lambda c: captions([c])[0][0]
  for step in range(1, NUM_STEPS + 1):
    batch = next(it)
    if any((row == ids_of(caption)).all() for row in batch["text"]):
      return step
  return None


def test_a_non_finite_loss_stops_the_run_naming_the_step(dataset, tmp_path):
  # Poison a caption that first appears in the batch of an odd step after 2, so the
  # failure is found at the next save (a later step) and must be traced back.
  config = tiny.get_config()
  config.data.dataset_dir = dataset
  train = pipeline.read_captions(dataset, "train", 10**6)
  candidates = {c: first_step_with(dataset, c) for c in sorted(set(train))}
  caption, bad_step = next((c, s) for c, s in candidates.items() if s in (3, 5, 7))
  embeddings = tmp_path / "emb.npz"
  write_embeddings(embeddings, all_captions(dataset), poisoned=caption)
  workdir = tmp_path / "run"
  result = subprocess.run(command(dataset, workdir, embeddings), cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode != 0
  last_good = bad_step - 1
  assert re.search(rf"NonFiniteError: step {bad_step}: non-finite (loss|grad_norm)", result.stderr), \
      result.stderr[-3000:]
  assert f"the last good checkpoint is step {last_good}" in result.stderr
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  assert steps[-1] == last_good and not any(".orbax-checkpoint-tmp" in s
                                            for s in os.listdir(workdir / "checkpoints"))
  params = checkpoints.load_weights(str(workdir), "params")
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  assert all(np.isfinite(v).all() for v in traverse_util.flatten_dict(params).values())
