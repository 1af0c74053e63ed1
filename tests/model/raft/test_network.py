"""Our RAFT against torchvision's on the committed fixtures, and its full-size configs."""

import jax
import numpy as np
import pytest
from flax import nnx

from tests.model.raft.conftest import CONFIGS, weights_path
from videojam_jax.model.raft import network
from videojam_jax.model.raft import weights

# float32 on CPU: 1e-5 relative to the flow's magnitude (a few px) covers the reduction
# order of the correlation and the convolutions.
ATOL = 1e-4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flow_matches_torchvision(name, raft_fixture):
  outputs, versions = raft_fixture
  model = weights.from_file(weights_path(name), CONFIGS[name])
  first = network.to_model_input(outputs["frame1"])
  second = network.to_model_input(outputs["frame2"])
  for updates in (1, versions["num_updates"]):
    flow = np.asarray(model(first, second, num_updates=updates)).transpose(0, 3, 1, 2)
    expected = outputs[f"{name}_flow_{updates}"]
    assert flow.shape == expected.shape == (2, 2, 64, 80)
    np.testing.assert_allclose(flow, expected, atol=ATOL)
  # More updates change the answer (the loop really iterates), as in torchvision.
  assert np.abs(outputs[f"{name}_flow_1"] - outputs[f"{name}_flow_4"]).max() > 100 * ATOL


@pytest.mark.parametrize("name, torchvision_params", [("raft_large", 5_257_536),
                                                      ("raft_small", 990_162)])
def test_full_size_configs_have_torchvisions_parameter_counts(name, torchvision_params):
  """torchvision's published num_params of raft_large / raft_small (its weights' meta)."""
  model = network.init(network.CONFIGS[name])
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert sum(int(np.prod(p.shape)) for p in params) == torchvision_params


def test_inputs_are_checked():
  model = network.init(CONFIGS["small_like"])
  image = np.zeros((1, 64, 80, 3), np.float32)
  with pytest.raises(ValueError, match="multiples of 8"):
    model(image[:, :60], image[:, :60])
  with pytest.raises(ValueError, match="differ in shape"):
    model(image, image[:, :, :72])
  with pytest.raises(ValueError, match="at least 32 px, got 24x80"):   # 3 levels: 8 * 2^2
    model(image[:, :24], image[:, :24])
  with pytest.raises(ValueError, match="must exceed"):
    network.RaftConfig(context_layers=(8, 8, 8, 8, 8), hidden=8)
