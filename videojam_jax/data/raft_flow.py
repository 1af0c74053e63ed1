"""RAFT as a flow estimator (videojam_jax.data.flow_estimators' 'raft'), batched on any device.

`RaftEstimator(weights_path)` loads torchvision RAFT weights (raft_large or
raft_small: told apart by their tensors, or named by `variant`) into our Flax
RAFT (videojam_jax/model/raft) and estimates the forward flow of consecutive
frames: pairs go through one jitted call in batches of `batch_size`, sides are
padded to multiples of 8 by repeating the edge (as RAFT's reference InputPadder
does) and the flow is cropped back. It runs wherever JAX does: CPU here, a GPU
or TPU in a latent-building or data job.
"""

from __future__ import annotations

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from videojam_jax.data import frames as frames_lib
from videojam_jax.model.raft import network
from videojam_jax.model.raft import weights as raft_weights

DEFAULT_NUM_UPDATES = 12   # torchvision's default number of GRU iterations
DEFAULT_BATCH_SIZE = 8     # frame pairs per device call


def variant_of(state_dict: dict[str, np.ndarray]) -> str:
  """'raft_large' or 'raft_small' from a torchvision state dict's tensors (only the
  large model has a mask predictor)."""
  return "raft_large" if "mask_predictor.conv.weight" in state_dict else "raft_small"


class RaftEstimator:
  """estimate(frames uint8 [T, H, W, 3]) -> float32 [T-1, H, W, 2] forward flow (dx, dy)."""

  def __init__(self, weights_path: str | os.PathLike, *, variant: str | None = None,
               config: network.RaftConfig | None = None,
               num_updates: int = DEFAULT_NUM_UPDATES, batch_size: int = DEFAULT_BATCH_SIZE):
    state_dict = raft_weights.read_state_dict(weights_path)
    if config is None:
      variant = variant or variant_of(state_dict)
      if variant not in network.CONFIGS:
        raise raft_weights.RaftWeightsError(
            f"RAFT variant {variant!r}: choose from {sorted(network.CONFIGS)}")
      config = network.CONFIGS[variant]
    if int(num_updates) < 1 or int(batch_size) < 1:
      raise ValueError(f"num_updates and batch_size must be >= 1, got {num_updates}, "
                       f"{batch_size}")
    self.num_updates, self.batch_size = int(num_updates), int(batch_size)
    model = raft_weights.load(network.init(config), state_dict, source=os.fspath(weights_path))
    self._graph, self._state = nnx.split(model)
    self.name = f"raft:{(variant or 'custom').removeprefix('raft_')}:{self.num_updates}"

    @jax.jit
    def flow(state, first, second):
      model = nnx.merge(self._graph, state)
      return model(network.to_model_input(first), network.to_model_input(second),
                   num_updates=self.num_updates)
    self._flow = flow

  def estimate(self, frames: np.ndarray) -> np.ndarray:
    frames = frames_lib.check_frames(frames, min_frames=2)
    t, h, w, _ = frames.shape
    pad_h, pad_w = -h % network.DOWNSAMPLE, -w % network.DOWNSAMPLE
    padded = np.pad(frames, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                             (pad_w // 2, pad_w - pad_w // 2), (0, 0)), mode="edge")
    pairs = t - 1
    flows = []
    for start in range(0, pairs, self.batch_size):
      stop = min(start + self.batch_size, pairs)
      # Every call has batch_size pairs (the last one repeated), so one compilation serves all.
      index = np.minimum(np.arange(start, start + self.batch_size), stop - 1)
      out = self._flow(self._state, jnp.asarray(padded[index]), jnp.asarray(padded[index + 1]))
      flows.append(np.asarray(out)[:stop - start])
    flow = np.concatenate(flows)
    return flow[:, pad_h // 2:pad_h // 2 + h, pad_w // 2:pad_w // 2 + w].astype(np.float32)
