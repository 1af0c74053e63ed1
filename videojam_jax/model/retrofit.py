"""Turning a base (pixel-only) DiT checkpoint into a VideoJAM one (DESIGN.md §1).

VideoJAM changes exactly two linear layers: the input projection gains motion
rows, W_in+ = [W_in ; 0], and the output projection gains a motion head,
W_out+ = [W_out, W_out_m]. With the motion rows at zero the retrofitted model's
video output equals the base model's, whatever the motion input.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

JAM_ONLY_PARAMS = ("motion_patch_embed", "motion_head")


class RetrofitError(ValueError):
  """The checkpoint does not fit the model it is loaded into."""


def is_jam(params: dict[str, Any]) -> bool:
  return all(name in params for name in JAM_ONLY_PARAMS)


def base_to_jam(base_params: dict[str, Any], jam_params_like: dict[str, Any]) -> dict[str, Any]:
  """Base parameters + zero motion input rows + a motion head.

  `jam_params_like` (arrays or ShapeDtypeStructs) gives the target structure.
  The motion head starts as a copy of the video head: motion videos go through
  the same autoencoder as the frames, so the video head is the nearest sensible
  start, and it changes nothing about the video output.
  """
  if is_jam(base_params):
    raise RetrofitError("checkpoint is already a VideoJAM model; load it directly")
  jam_names = set(jam_params_like)
  base_names = set(base_params)
  if base_names != jam_names - set(JAM_ONLY_PARAMS):
    raise RetrofitError(
        f"base checkpoint does not match the model: missing {sorted(jam_names - set(JAM_ONLY_PARAMS) - base_names)}, "
        f"unexpected {sorted(base_names - jam_names)}")
  check_shapes(base_params, {k: jam_params_like[k] for k in base_names})
  params = dict(base_params)
  motion_embed = jam_params_like["motion_patch_embed"]["kernel"]
  params["motion_patch_embed"] = {"kernel": np.zeros(motion_embed.shape, motion_embed.dtype)}
  params["motion_head"] = jax.tree.map(np.array, base_params["video_head"])
  return params


def check_shapes(params: Any, params_like: Any) -> None:
  """Raises RetrofitError naming every parameter whose shape differs."""
  flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  flat_like = dict(jax.tree_util.tree_flatten_with_path(params_like)[0])
  if flat.keys() != flat_like.keys():
    raise RetrofitError(f"parameter trees differ: {sorted(map(jax.tree_util.keystr, flat.keys() ^ flat_like.keys()))[:10]}")
  bad = [f"{jax.tree_util.keystr(k)}: {np.shape(flat[k])} vs {tuple(flat_like[k].shape)}"
         for k in flat if tuple(np.shape(flat[k])) != tuple(flat_like[k].shape)]
  if bad:
    raise RetrofitError("checkpoint shapes do not fit the model config:\n  " + "\n  ".join(bad))


def load_into(loaded: dict[str, Any], params_like: dict[str, Any], jam: bool) -> dict[str, Any]:
  """Parameters for a model of structure `params_like`, from a base or JAM checkpoint."""
  if jam and not is_jam(loaded):
    return base_to_jam(loaded, params_like)
  if not jam and is_jam(loaded):
    raise RetrofitError("cannot load a VideoJAM checkpoint into a baseline model (model.jam=False)")
  check_shapes(loaded, params_like)
  return loaded
