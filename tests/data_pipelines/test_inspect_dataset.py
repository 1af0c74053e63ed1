"""Tests for data_pipelines/inspect_dataset.py, on the shared tiny synthetic dataset."""

import json
import os

import imageio.v3 as iio
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import inspect_dataset
from videojam_jax.data import motion_encoding

PANELS = 3


def test_inspect_renders_records(synthetic_data, tmp_path):
  dataset_dir, version_dir = synthetic_data
  paths = inspect_dataset.inspect(dataset_dir, "train", 2, str(tmp_path), start=1, fmt="gif")
  assert len(paths) == 2 and all(os.path.getsize(p) > 0 for p in paths)
  record = tfds.builder_from_directory(version_dir).as_data_source("train")[1]
  with open(paths[0].replace(".gif", ".json")) as f:
    sidecar = json.load(f)
  assert sidecar["caption"] == record["caption"].decode()
  assert sidecar["clip_id"] == record["clip_id"].decode() and sidecar["index"] == 1
  assert os.path.basename(paths[0]).startswith("train_00001_" + inspect_dataset.slug(
      sidecar["caption"])[:20])
  frames = iio.imread(paths[0])
  t, h, w, _ = record["video"].shape
  assert frames.shape[0] == t
  # Three panels and two gaps, upscaled by the same integer factor as the height.
  factor = frames.shape[1] // h
  assert frames.shape[2] == factor * (PANELS * w + 2 * inspect_dataset.PANEL_GAP)


def test_render_record_panels():
  rng = np.random.default_rng(0)
  flow = np.zeros((3, 6, 5, 2), np.float32)
  flow[..., 0] = 2.0
  record = {"video": rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8), "flow": flow,
            "motion": rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)}
  frames, scale = inspect_dataset.render_record(record)
  gap = inspect_dataset.PANEL_GAP
  assert frames.shape == (4, 6, 3 * 5 + 2 * gap, 3) and scale == 2.0
  np.testing.assert_array_equal(frames[:, :, :5], record["video"])
  np.testing.assert_array_equal(frames[:, :, -5:], record["motion"])
  assert np.all(frames[:, :, 5:5 + gap] == 255)


def test_a_record_without_flow_shows_its_decoded_motion_video():
  """Video datasets store no raw flow by default: the flow panel decodes the motion video."""
  flow = np.zeros((3, 6, 5, 2), np.float32)
  flow[..., 0] = 2.0
  motion = motion_encoding.flows_to_motion_video(flow, 0.3)
  video = np.zeros((4, 6, 5, 3), np.uint8)
  stored, _ = inspect_dataset.render_record({"video": video, "motion": motion, "flow": flow})
  decoded, scale = inspect_dataset.render_record({"video": video, "motion": motion}, 0.3)
  assert abs(scale - 2.0) < 0.05           # the decoded flow: 2 px, to the encoding's step
  np.testing.assert_allclose(decoded.astype(int), stored.astype(int), atol=3)
  # The dataset's sigma matters: decoded with half of it, the flow reads half as long.
  _, half_scale = inspect_dataset.render_record({"video": video, "motion": motion}, 0.15)
  assert abs(half_scale - 1.0) < 0.05
