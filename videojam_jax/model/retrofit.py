"""Turning a base (pixel-only) DiT checkpoint into a VideoJAM one (DESIGN.md §1).

VideoJAM changes exactly two linear layers: the input projection gains motion
rows, W_in+ = [W_in ; 0], and the output projection gains a motion head,
W_out+ = [W_out, W_out_m]. With the motion rows at zero the retrofitted model's
video output equals the base model's, whatever the motion input.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

JAM_ONLY_PARAMS = ("motion_patch_embed", "motion_head")


class RetrofitError(ValueError):
  """The checkpoint does not fit the model it is loaded into."""


def is_jam(params: dict[str, Any]) -> bool:
  """Whether a parameter tree (arrays or shapes) has VideoJAM's motion projections."""
  return all(name in params for name in JAM_ONLY_PARAMS)


def base_params_like(jam_params_like: dict[str, Any]) -> dict[str, Any]:
  """The part of a VideoJAM parameter tree that its base model has."""
  return {k: v for k, v in jam_params_like.items() if k not in JAM_ONLY_PARAMS}


def base_to_jam(base_params: dict[str, Any], jam_params_like: dict[str, Any]) -> dict[str, Any]:
  """Base parameters + zero motion input rows + a motion head (jnp; jit it to place them).

  `jam_params_like` (arrays or ShapeDtypeStructs) gives the target structure.
  The motion head starts as a copy of the video head: motion videos go through
  the same autoencoder as the frames, so the video head is the nearest sensible
  start, and it changes nothing about the video output.
  """
  if is_jam(base_params):
    raise RetrofitError("checkpoint is already a VideoJAM model; load it directly")
  expected = set(base_params_like(jam_params_like))
  if set(base_params) != expected:
    raise RetrofitError(
        f"base checkpoint does not match the model: missing {sorted(expected - set(base_params))}, "
        f"unexpected {sorted(set(base_params) - expected)}")
  params = dict(base_params)
  motion_embed = jam_params_like["motion_patch_embed"]["kernel"]
  params["motion_patch_embed"] = {"kernel": jnp.zeros(motion_embed.shape, motion_embed.dtype)}
  params["motion_head"] = jax.tree.map(jnp.array, base_params["video_head"])
  return params
