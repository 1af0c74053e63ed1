"""RAFT as a flow estimator: padding, batching, weights of either torchvision model."""

import numpy as np
import pytest
import safetensors.numpy

from tests.data.test_flow_estimators import translated_clip
from tests.model.raft.conftest import CONFIGS, weights_path
from videojam_jax.data import flow_estimators
from videojam_jax.data import raft_flow
from videojam_jax.model.raft import network
from videojam_jax.model.raft import weights


def test_estimate_pads_to_multiples_of_8_and_crops_back():
  estimator = raft_flow.RaftEstimator(weights_path("large_like"), config=CONFIGS["large_like"],
                                      num_updates=2, batch_size=2)
  frames = translated_clip(4)[:, :60, :52]           # 3 pairs, sides not multiples of 8
  flow = estimator.estimate(frames)
  assert flow.shape == (3, 60, 52, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
  # The same as the network on the edge-padded frames (64 x 56), cropped at the same offset.
  model = weights.from_file(weights_path("large_like"), CONFIGS["large_like"])
  padded = np.pad(frames, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
  direct = np.asarray(model(network.to_model_input(padded[:-1]),
                            network.to_model_input(padded[1:]), num_updates=2))
  np.testing.assert_allclose(flow, direct[:, 2:62, 2:54], atol=1e-4)


def test_batching_does_not_change_the_flow():
  frames = translated_clip(5)
  one = raft_flow.RaftEstimator(weights_path("small_like"), config=CONFIGS["small_like"],
                                num_updates=2, batch_size=1).estimate(frames)
  three = raft_flow.RaftEstimator(weights_path("small_like"), config=CONFIGS["small_like"],
                                  num_updates=2, batch_size=3).estimate(frames)
  assert one.shape == (4, 64, 64, 2)
  np.testing.assert_allclose(one, three, atol=1e-4)


def test_registry_builds_raft_small_from_a_safetensors_file(tmp_path):
  """A raft_small-shaped file (our random weights under torchvision's names): the variant
  is told from its tensors and the estimator runs through the registry."""
  path = tmp_path / "raft_small.safetensors"
  safetensors.numpy.save_file(weights.to_state_dict(network.init(network.RAFT_SMALL, seed=1)),
                              str(path))
  estimator = flow_estimators.create_estimator("raft", weights_path=str(path), num_updates="2")
  assert estimator.name == "raft:small:2"
  flow = estimator.estimate(translated_clip(2))
  assert flow.shape == (1, 64, 64, 2) and np.isfinite(flow).all()
  with pytest.raises(flow_estimators.FlowEstimatorError, match="missing"):
    flow_estimators.create_estimator("raft", weights_path=str(path), variant="raft_large")
