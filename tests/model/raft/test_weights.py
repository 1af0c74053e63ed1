"""Reading torchvision RAFT files without torch, and the name table's checks."""

import pickle
import zipfile

import numpy as np
import pytest

from tests.model.raft.conftest import CONFIGS, weights_path
from videojam_jax.model.raft import network
from videojam_jax.model.raft import weights


def test_torch_zip_reads_every_tensor_with_its_dtype_and_layout():
  state = weights.read_torch_zip(weights_path("large_like"))
  assert state["feature_encoder.convnormrelu.0.weight"].shape == (8, 3, 7, 7)
  assert state["feature_encoder.convnormrelu.0.weight"].dtype == np.float32
  # BatchNorm's counter is an int64 tensor; it is read, and ignored by `load`.
  counters = [k for k in state if k.endswith("num_batches_tracked")]
  assert counters and all(state[k].dtype == np.int64 for k in counters)
  # The randomised running statistics of the fixture arrive intact.
  var = state["context_encoder.convnormrelu.1.running_var"]
  assert var.min() >= 0.5 and var.max() <= 2.0 and var.std() > 0


def test_table_maps_every_tensor_both_ways(tmp_path):
  model = weights.from_file(weights_path("small_like"), CONFIGS["small_like"])
  state = weights.read_torch_zip(weights_path("small_like"))
  exported = weights.to_state_dict(model)
  assert set(exported) == {k for k in state if not k.endswith("num_batches_tracked")}
  for name, tensor in exported.items():
    np.testing.assert_array_equal(tensor, state[name])


def test_wrong_config_or_file_is_a_clear_error(tmp_path):
  with pytest.raises(weights.RaftWeightsError, match=r"small_like\.pth: .* missing"):
    weights.from_file(weights_path("small_like"), CONFIGS["large_like"])
  narrow = network.RaftConfig(**{**CONFIGS["small_like"].__dict__, "flow_head_hidden": 8})
  with pytest.raises(weights.RaftWeightsError, match=r"flow_head\.conv1\.weight is \(16, 12, 3, 3\) in the checkpoint, the config needs \(8, 12, 3, 3\)"):
    weights.from_file(weights_path("small_like"), narrow)
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not a zip")
  with pytest.raises(weights.RaftWeightsError, match="not a torch.save zip"):
    weights.read_state_dict(junk)
  with pytest.raises(weights.RaftWeightsError, match="not found"):
    weights.read_state_dict(tmp_path / "absent.pth")


def test_a_pickle_with_code_in_it_is_refused(tmp_path):
  """Only tensors, storages and OrderedDict are admitted: a pickle that would call
  os.system when loaded is refused, not run."""
  class Evil:
    def __reduce__(self):
      import os  # pylint: disable=import-outside-toplevel
      return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("evil/data.pkl", pickle.dumps({"x": Evil()}))
  with pytest.raises(weights.RaftWeightsError, match="posix.system|os.system"):
    weights.read_state_dict(path)
  assert not (tmp_path / "pwned").exists()
