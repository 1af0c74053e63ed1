"""The RAFT parity fixtures (tests/fixtures/raft/make_fixtures.py, torchvision with random
weights) and the configs of our Raft that match them."""

import json
import os

import numpy as np
import pytest

from tests.conftest import REPO
from videojam_jax.model.raft import network

FIXTURES = os.path.join(REPO, "tests", "fixtures", "raft")
# make_fixtures.py's MODELS, as our configs.
CONFIGS = {
    "large_like": network.RaftConfig(
        feature_layers=(8, 8, 12, 16, 24), feature_block="residual", feature_norm="instance",
        context_layers=(8, 8, 12, 16, 24), context_block="residual", context_norm="batch",
        corr_levels=3, corr_radius=2, motion_corr_layers=(16, 12), motion_flow_layers=(8, 8),
        motion_out=16, hidden=12, gru_kernels=((1, 5), (5, 1)), flow_head_hidden=16,
        mask_predictor=True, mask_hidden=16),
    "small_like": network.RaftConfig(
        feature_layers=(8, 8, 16, 16, 24), feature_block="bottleneck", feature_norm="instance",
        context_layers=(8, 8, 16, 16, 28), context_block="bottleneck", context_norm="none",
        corr_levels=3, corr_radius=3, motion_corr_layers=(16,), motion_flow_layers=(8, 8),
        motion_out=14, hidden=12, gru_kernels=((3, 3),), flow_head_hidden=16,
        mask_predictor=False),
}


@pytest.fixture(scope="session")
def raft_fixture():
  """(outputs.npz arrays, versions.json)."""
  with np.load(os.path.join(FIXTURES, "outputs.npz")) as f:
    outputs = {k: f[k] for k in f.files}
  with open(os.path.join(FIXTURES, "versions.json")) as f:
    return outputs, json.load(f)


def weights_path(name: str) -> str:
  return os.path.join(FIXTURES, f"{name}.pth")
