"""Wan checkpoints in diffusers format: export round trips, and clear errors."""

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from videojam_jax.model import diffusers_format as fmt
from videojam_jax.model import functional
from videojam_jax.model.wan import transformer as transformer_lib
from videojam_jax.model.wan import vae as vae_lib
from videojam_jax.model.wan import weights
from videojam_jax.parallel import sharding

FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures" / "wan"


@pytest.fixture(scope="module")
def plan():
  return sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))


def all_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
  out = {}
  for file in directory.glob("*.safetensors"):
    out.update(load_file(str(file)))
  return out


def abstract_transformer(config, plan):
  return functional.abstract_split(
      lambda: transformer_lib.WanTransformer(config, rngs=nnx.Rngs(0)), plan)[1]


def test_transformer_export_round_trips_the_reference_files(tmp_path, plan):
  config = weights.read_transformer_config(FIXTURES / "transformer")
  params = weights.load_transformer(FIXTURES / "transformer", config,
                                    abstract_transformer(config, plan))
  files = weights.save_transformer(tmp_path, config, params, max_shard_size=30_000)
  assert fmt.INDEX_NAME in files and len(files) > 3          # sharded, with its index
  original, exported = all_tensors(FIXTURES / "transformer"), all_tensors(tmp_path)
  assert sorted(original) == sorted(exported)
  for name, tensor in original.items():
    np.testing.assert_array_equal(exported[name], tensor, err_msg=name)
  assert weights.read_transformer_config(tmp_path) == config
  # diffusers' own config keys survive, so from_pretrained builds the same model.
  theirs = json.loads((FIXTURES / "transformer" / "config.json").read_text())
  ours = json.loads((tmp_path / "config.json").read_text())
  for key in theirs:
    if not key.startswith("_"):
      assert ours[key] == theirs[key], key


def test_vae_export_round_trips_the_reference_file(tmp_path, plan):
  config = weights.read_vae_config(FIXTURES / "vae")
  abstract = functional.abstract_split(lambda: vae_lib.WanVAE(config, rngs=nnx.Rngs(0)), plan)[1]
  params = weights.load_vae(FIXTURES / "vae", abstract)
  weights.save_vae(tmp_path, config, params)
  original, exported = all_tensors(FIXTURES / "vae"), all_tensors(tmp_path)
  assert sorted(original) == sorted(exported)
  for name, tensor in original.items():
    np.testing.assert_array_equal(exported[name], tensor, err_msg=name)
  assert weights.read_vae_config(tmp_path) == config


def test_loads_into_mesh_shardings_and_the_sharded_forward_matches(tmp_path):
  """8 fake devices (a subprocess): each tensor arrives split as its logical names say."""
  out = tmp_path / "report.json"
  subprocess.run([sys.executable, str(pathlib.Path(__file__).parent / "sharded_load_check.py"),
                  "--out", str(out)], check=True, timeout=600)
  report = json.loads(out.read_text())
  assert report["devices"] == 8 and report["specs_match"]
  # ffn proj_in [layers, embed, mlp]: embed over fsdp (2), mlp over tensor (2).
  assert report["ffn_spec"] == ["None", "fsdp", "tensor"]
  assert report["ffn_shard_shape"] == [2, 12, 24] and report["ffn_shape"] == [2, 24, 48]
  assert report["q_spec"] == ["None", "fsdp", "tensor", "None"]
  assert report["q_shard_shape"] == [2, 12, 1, 12]
  assert report["max_abs_error"] < 2e-5


def copy_fixture(tmp_path, name="transformer") -> pathlib.Path:
  target = tmp_path / name
  shutil.copytree(FIXTURES / name, target)
  return target


def edit_config(directory: pathlib.Path, **changes) -> None:
  config = json.loads((directory / "config.json").read_text())
  config.update(changes)
  (directory / "config.json").write_text(json.dumps(config))


def test_a_directory_without_config_is_not_a_checkpoint(tmp_path):
  with pytest.raises(fmt.CheckpointError, match="not a diffusers model directory"):
    weights.read_transformer_config(tmp_path)
  (tmp_path / "model_index.json").write_text("{}")
  with pytest.raises(fmt.CheckpointError, match="component folder"):
    weights.read_transformer_config(tmp_path)


def test_a_vae_is_not_a_transformer():
  with pytest.raises(fmt.CheckpointError, match="AutoencoderKLWan"):
    weights.read_transformer_config(FIXTURES / "vae")


def test_image_to_video_checkpoints_are_refused(tmp_path):
  directory = copy_fixture(tmp_path)
  edit_config(directory, image_dim=1280)
  with pytest.raises(fmt.CheckpointError, match="image-to-video"):
    weights.read_transformer_config(directory)


def test_a_missing_shard_is_named(tmp_path, plan):
  directory = copy_fixture(tmp_path)
  shard = sorted(directory.glob("*-of-*.safetensors"))[1]
  shard.unlink()
  config = weights.read_transformer_config(directory)
  with pytest.raises(fmt.CheckpointError, match=shard.name):
    weights.load_transformer(directory, config, abstract_transformer(config, plan))


def test_a_truncated_shard_is_named(tmp_path, plan):
  directory = copy_fixture(tmp_path)
  shard = sorted(directory.glob("*-of-*.safetensors"))[0]
  shard.write_bytes(shard.read_bytes()[:100])
  config = weights.read_transformer_config(directory)
  with pytest.raises(fmt.CheckpointError, match=shard.name):
    weights.load_transformer(directory, config, abstract_transformer(config, plan))


def test_weights_of_another_size_than_the_config(plan):
  """E.g. 14B weights with the 1.3B config: every differing field is named."""
  found = weights.read_transformer_config(FIXTURES / "transformer")
  other = dataclasses.replace(found, num_layers=3, ffn_dim=64)
  with pytest.raises(fmt.CheckpointError, match="num_layers: checkpoint 2, config 3") as e:
    weights.load_transformer(FIXTURES / "transformer", other, abstract_transformer(other, plan))
  assert "ffn_dim: checkpoint 48, config 64" in str(e.value)


def test_weights_that_do_not_fit_their_own_config_json(tmp_path, plan):
  directory = copy_fixture(tmp_path)
  edit_config(directory, ffn_dim=64)
  model_config = weights.read_transformer_config(directory)
  with pytest.raises(fmt.CheckpointError, match=r"ffn\.net\.0\.proj\.weight is \(48, 24\)"):
    weights.load_transformer(directory, model_config, abstract_transformer(model_config, plan))


def test_fewer_layers_in_the_checkpoint_than_its_config_says(tmp_path, plan):
  directory = copy_fixture(tmp_path)
  edit_config(directory, num_layers=3)
  model_config = weights.read_transformer_config(directory)
  with pytest.raises(fmt.CheckpointError, match="missing, e.g. .*blocks.2"):
    weights.load_transformer(directory, model_config, abstract_transformer(model_config, plan))
