"""data_pipelines/latent_clips.py: clip shards -> Wan VAE latent shards, and training on them.

The VAE is the diffusers fixture (tests/fixtures/wan/vae: z_dim 4, 4x time and 8x
space compression), so 5-frame 16 x 16 clips become 2 x 2 x 2 x 4 latents.
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import wan_tiny
from data_pipelines import synthetic_dataset
from data_pipelines import latent_clips
from tests.conftest import REPO
from tests.conftest import subprocess_env
from videojam_jax.data import clip_records
from videojam_jax.data import pipeline
from videojam_jax.model.wan import weights

VAE = REPO / "tests" / "fixtures" / "wan" / "vae"
PIPELINE = REPO / "tests" / "fixtures" / "wan" / "pipeline"      # its tiny umT5: 32 wide
LATENT = dict(num_frames=2, height=2, width=2, channels=4)
TEXT = dict(source="precomputed", max_length=16, embedding_dim=32)


def config_for(root, *, side=16, clips=(6, 2), batch_size=4):
  """A synthetic pixel dataset of 5-frame side x side clips (train, eval counts) under
  root/pixels, and the config that encodes it into root/latents."""
  config = wan_tiny.get_config()
  config.compilation_cache_dir = ""
  config.data.num_frames, config.data.height, config.data.width = 5, side, side
  config.data.synthetic.num_train_clips, config.data.synthetic.num_eval_clips = clips
  config.data.dataset_dir = str(root / "pixels")
  synthetic_dataset.build(config)
  config.data.latents.source_dir = str(root / "pixels")
  config.data.latents.vae = str(VAE)
  config.data.latents.batch_size = batch_size
  config.data.dataset_dir = str(root / "latents")
  return config


@pytest.fixture(scope="module")
def latent_data(tmp_path_factory):
  """Latent clips whose records also carry the captions' umT5 embeddings."""
  root = tmp_path_factory.mktemp("latent_clips")
  config = config_for(root)
  config.model.text.update(TEXT)
  config.data.latents.text_encoder = str(PIPELINE)
  return config, latent_clips.build(config)


def test_records_are_the_normalised_vae_means_of_video_and_motion(latent_data):
  config, version_dir = latent_data
  built = tfds.builder_from_directory(version_dir)
  metadata = dict(built.info.metadata)
  assert metadata["source"] == "wan_latent_clips" and metadata["channels"] == 4
  assert (metadata["num_frames"], metadata["height"], metadata["width"]) == (2, 2, 2)
  assert metadata["vae_sha256"] == weights.vae_sha256(str(VAE))
  assert metadata["latents_mean"] == [-0.5, 0.25, 1.0, -1.5]
  assert (metadata["pixel_num_frames"], metadata["pixel_height"]) == (5, 16)
  assert_records_are_the_source_encoded(version_dir, config)
  # The captions' umT5 embeddings, their tokens only (the mask is the length).
  assert (metadata["text_embedding_dim"], metadata["text_max_length"]) == (32, 16)
  from videojam_jax.model.wan import text as wan_text
  umt5 = wan_text.WanTextEncoder.from_pipeline(str(PIPELINE), one_device_plan(), max_length=16)
  records = built.as_data_source("train")
  captions = [records[i]["caption"].decode() for i in range(2)]
  want, mask = umt5(captions)
  for i in range(2):
    got = records[i]["text_embedding"]
    assert got.shape == (int(mask[i].sum()), 32)
    np.testing.assert_allclose(got, want[i][:len(got)], rtol=0, atol=1e-5)


def test_the_trainer_checks_shape_and_vae(latent_data, tmp_path):
  config, _ = latent_data
  config = config.copy_and_resolve_references()
  config.data.update(LATENT)
  source, _ = pipeline.open_clip_source(config, "train")       # matches: opens
  assert source[0]["video"].dtype == np.float32
  wrong = config.copy_and_resolve_references()
  wrong.data.channels = 16
  with pytest.raises(clip_records.DatasetMismatchError, match="4 channels.*data.channels=16"):
    pipeline.open_clip_source(wrong, "train")
  other = tmp_path / "other_vae"
  shutil.copytree(VAE, other)
  (other / "config.json").write_text((other / "config.json").read_text().replace("\n", "\n "))
  wrong = config.copy_and_resolve_references()
  wrong.data.latents.vae = str(other)
  with pytest.raises(clip_records.DatasetMismatchError, match="made by another VAE"):
    pipeline.open_clip_source(wrong, "train")
  from videojam_jax.data import text as text_lib
  for field, value, message in (("embedding_dim", 64, "32 wide, model.text.embedding_dim is 64"),
                                ("max_length", 8, "up to 16 tokens, more than")):
    text = ml_collections.ConfigDict(dict(TEXT))
    text[field] = value
    with pytest.raises(clip_records.DatasetMismatchError, match=message):
      pipeline.create_dataset(config.data, "train", batch_size=1,
                              captions=text_lib.CaptionInputs(text, ""))


def test_source_clips_the_vae_cannot_encode_are_refused(tmp_path):
  config = config_for(tmp_path)
  config.data.latents.source_dir = str(tmp_path / "four_frames")
  four = config.copy_and_resolve_references()
  four.data.num_frames, four.data.dataset_dir = 4, str(tmp_path / "four_frames")
  synthetic_dataset.build(four)
  with pytest.raises(clip_records.DatasetMismatchError, match="1 \\+ 4k frames"):
    latent_clips.build(config)


def test_wan_trains_and_resumes_on_latent_clips(latent_data, tmp_path):
  config, _ = latent_data
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "videojam_jax.train", "--config", "configs/wan_tiny.py",
             f"--workdir={workdir}", f"--config.data.dataset_dir={config.data.dataset_dir}",
             f"--config.data.latents.vae={VAE}", "--config.compilation_cache_dir=",
             # Constant LR and tensorboardX: see tests/test_train_wan.py's run().
             "--config.optim.schedule=constant", "--config.train.metric_writer=tensorboardx",
             *[f"--config.data.{k}={v}" for k, v in LATENT.items()],
             "--config.model.wan.in_channels=4", "--config.model.wan.out_channels=4",
             *[f"--config.model.text.{k}={v}" for k, v in TEXT.items()],   # from the records
             "--config.model.jam=True", "--config.evals.samples.every_steps=0",
             "--config.evals.heldout.every_steps=2", "--config.train.checkpoint_every=2"]
  result = subprocess.run(command + ["--config.train.num_steps=2"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  assert re.search(r"\[2\] train/.*train/motion_loss=", result.stderr)
  assert re.search(r"\[2\] heldout/motion_loss=", result.stderr)
  result = subprocess.run(command + ["--config.train.num_steps=3"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  assert [int(s) for s in re.findall(r"\[(\d+)\] train/.*train/loss=", result.stderr)] == [3]


def test_real_videos_become_latent_clips(tmp_path):
  from data_pipelines import build_from_videos
  from tests.data_pipelines.test_video_files import captioned_videos
  videos = tmp_path / "videos"
  captioned_videos(videos)
  report = build_from_videos.build(
      str(videos), str(videos / "captions.jsonl"), str(tmp_path / "pixels"), num_frames=5,
      height=16, width=16, fps=8.0, stride=8, sigma=0.15, workers=1, progress=False)
  assert report.skipped == []
  config = wan_tiny.get_config()
  config.data.latents.source_dir = report.dataset_dir
  config.data.latents.vae = str(VAE)
  config.data.dataset_dir = str(tmp_path / "latents")
  built = tfds.builder_from_directory(latent_clips.build(config))
  source = dict(tfds.builder_from_directory(report.dataset_dir).info.metadata)
  metadata = dict(built.info.metadata)
  assert (metadata["flow_estimator"], metadata["fps"]) == (source["flow_estimator"], source["fps"])
  for split in built.info.splits:
    records = built.as_data_source(split)
    assert len(records) == report.clips[split]
    assert all(np.isfinite(records[i]["video"]).all() and records[i]["video"].shape == (2, 2, 2, 4)
               for i in range(len(records)))
  # Built without a text encoder: precomputed text then needs data.text_embeddings.
  config.data.update(LATENT)
  text = ml_collections.ConfigDict(dict(TEXT))
  from videojam_jax.data import text as text_lib
  with pytest.raises(ValueError, match="holds no caption embeddings and data.text_embeddings"):
    pipeline.create_dataset(config.data, "train", batch_size=1,
                            captions=text_lib.CaptionInputs(text, ""))


def test_undecodable_source_clips_are_skipped_and_reported(tmp_path, capsys, monkeypatch):
  config = config_for(tmp_path)
  # Record 2 of train fails to decode as a corrupt shard makes it fail (CheckedSource's
  # error; tests/data/test_pipeline.py corrupts real bytes, which here would take the
  # whole tiny shard's only chunk with it).
  read = pipeline.CheckedSource.__getitem__

  def failing(self, index):
    if "[train]" in self._name and index == 2:
      raise pipeline.CorruptRecordError(f"record 2 of {self._name} cannot be decoded (test)")
    return read(self, index)
  monkeypatch.setattr(pipeline.CheckedSource, "__getitem__", failing)
  version_dir = latent_clips.build(config)
  skipped = json.loads((pathlib.Path(version_dir) / latent_clips.SKIPPED_FILE).read_text())
  assert [(s["split"], s["index"]) for s in skipped] == [("train", 2)]
  assert "cannot be decoded" in skipped[0]["reason"]
  built = tfds.builder_from_directory(version_dir)
  assert len(built.as_data_source("train")) == 5 and len(built.as_data_source("validation")) == 2
  assert f"1 skipped (listed in {latent_clips.SKIPPED_FILE})" in capsys.readouterr().out


def small_chunks_config(root):
  """6 train clips in 3 chunks of 2, 2 validation clips in 1: one VAE call per chunk."""
  config = config_for(root)
  config.data.latents.batch_size, config.data.latents.chunk_clips = 2, 2
  return config


def one_device_plan():
  from videojam_jax.parallel import sharding
  return sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))


def assert_records_are_the_source_encoded(version_dir, config):
  """Every source clip once, in source order: the VAE's normalised means, its caption."""
  built = tfds.builder_from_directory(version_dir)
  source = tfds.builder_from_directory(
      pipeline.find_dataset_version_dir(config.data.latents.source_dir))
  encoder = latent_clips.LatentEncoder(str(VAE), one_device_plan())
  for split, count in (("train", 6), ("validation", 2)):
    latents, pixels = built.as_data_source(split), source.as_data_source(split)
    assert len(latents) == count
    for i in range(count):
      assert latents[i]["clip_id"] == pixels[i]["clip_id"]
      assert latents[i]["caption"] == pixels[i]["caption"]
      want = encoder(np.stack([pixels[i]["video"], pixels[i]["motion"]]))
      np.testing.assert_allclose(latents[i]["video"], want[0], rtol=0, atol=1e-5)
      np.testing.assert_allclose(latents[i]["motion"], want[1], rtol=0, atol=1e-5)


def test_an_interrupted_build_resumes_encoding_only_the_chunks_it_lacks(tmp_path, monkeypatch,
                                                                        capsys):
  config = small_chunks_config(tmp_path)
  calls = []
  encode = latent_clips.LatentEncoder.__call__

  def interrupted_at_third_call(self, clips):
    if len(calls) == 2:
      raise KeyboardInterrupt       # Ctrl-C while train's chunk 2 is encoded
    calls.append(len(clips))
    return encode(self, clips)
  monkeypatch.setattr(latent_clips.LatentEncoder, "__call__", interrupted_at_third_call)
  with pytest.raises(KeyboardInterrupt):
    latent_clips.build(config)
  work = tmp_path / "latents" / latent_clips.WORK_FOLDER
  (name,) = [p.name for p in work.iterdir()]
  assert sorted(p.name for p in (work / name / "train").iterdir()) == [
      "chunk-00000.npz", "chunk-00001.npz"]            # whole chunks, nothing half-written
  assert not (tmp_path / "latents" / latent_clips.SOURCE).exists() or not list(
      (tmp_path / "latents" / latent_clips.SOURCE).glob("*/1.0.0/dataset_info.json"))

  calls.clear()
  monkeypatch.setattr(latent_clips.LatentEncoder, "__call__",
                      lambda self, clips: calls.append(len(clips)) or encode(self, clips))
  version_dir = latent_clips.build(config)
  assert len(calls) == 2               # train's chunk 2 and validation's chunk 0 only
  assert "train: 2 of 3 chunks already encoded" in capsys.readouterr().out
  assert not (work / name).exists()    # the chunks are gone once the dataset is written
  assert_records_are_the_source_encoded(version_dir, config)
  latent_clips.build(config)
  assert "Already built, nothing to do" in capsys.readouterr().out


def test_each_process_encodes_its_own_chunks_and_process_0_writes_the_dataset(tmp_path,
                                                                               monkeypatch):
  config = small_chunks_config(tmp_path)
  written, synced = [], []
  write = latent_clips.ChunkStore.write
  monkeypatch.setattr(latent_clips.ChunkStore, "write",
                      lambda self, split, chunk, *a: written.append((split, chunk))
                      or write(self, split, chunk, *a))
  # Process 1 of 2 (its peer not started yet): chunks 1, 3, ... of each split, no dataset.
  version_dir = latent_clips.build(config, share=latent_clips.Share(1, 2), sync=synced.append)
  assert written == [("train", 1)] and len(synced) == 2
  assert not (pathlib.Path(version_dir) / "dataset_info.json").exists()
  written.clear()
  version_dir = latent_clips.build(config, share=latent_clips.Share(0, 2), sync=synced.append)
  assert written == [("train", 0), ("train", 2), ("validation", 0)]
  assert_records_are_the_source_encoded(version_dir, config)


def test_a_work_dir_of_another_build_is_refused(tmp_path):
  config = small_chunks_config(tmp_path)
  config.data.latents.work_dir = str(tmp_path / "work")
  store = latent_clips.ChunkStore(config.data.latents.work_dir)
  store.check_identity({"chunk_clips": 4, "source_dataset": "elsewhere"})
  with pytest.raises(latent_clips.EncodingWorkDirError,
                     match=r"chunk_clips: 4 there, 2 now.*Remove it, or set data.latents.work_dir"):
    latent_clips.build(config)
  config.data.latents.chunk_clips = 3
  with pytest.raises(ValueError, match="chunk_clips=3 must be a positive multiple of .*batch_size=2"):
    latent_clips.build(config)


def test_raft_remakes_the_motion_in_the_same_pass(tmp_path):
  """data.latents.flow_weights: the motion videos come from RAFT flow of the source frames
  (computed on the VAE's devices, in the same pass), not from the source's motion."""
  import safetensors.numpy  # pylint: disable=import-outside-toplevel
  from videojam_jax.model.raft import network  # pylint: disable=import-outside-toplevel
  from videojam_jax.model.raft import weights as raft_weights  # pylint: disable=import-outside-toplevel
  raft = tmp_path / "raft_small.safetensors"    # raft_small's shapes, random weights
  safetensors.numpy.save_file(raft_weights.to_state_dict(network.init(network.RAFT_SMALL)),
                              str(raft))
  config = config_for(tmp_path, side=64, clips=(2, 2), batch_size=2)   # RAFT: >= 64 px
  config.data.latents.chunk_clips = 2
  plain = tfds.builder_from_directory(latent_clips.build(config))
  config.data.latents.flow_weights = str(raft)
  config.data.latents.flow_updates = 2
  with_raft = tfds.builder_from_directory(latent_clips.build(config))
  assert with_raft.info.metadata["flow_estimator"] == "raft:small:2"
  assert plain.info.metadata["flow_estimator"] != "raft:small:2"
  name = lambda builder: pathlib.Path(builder.data_dir).parent.name   # the config's name
  assert name(with_raft).endswith("-raft-small-2") and "raft" not in name(plain)
  a, b = plain.as_data_source("train"), with_raft.as_data_source("train")
  for i in range(len(a)):
    assert a[i]["clip_id"] == b[i]["clip_id"]
    np.testing.assert_array_equal(a[i]["video"], b[i]["video"])     # frames: the same
    assert np.abs(a[i]["motion"] - b[i]["motion"]).max() > 1e-3     # motion: RAFT's
    assert b[i]["motion"].shape == (2, 8, 8, 4) and np.isfinite(b[i]["motion"]).all()
