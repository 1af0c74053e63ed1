"""The open-file limit for many-shard datasets (videojam_jax/data/open_files.py)."""

import errno
import resource
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO
from videojam_jax.data import open_files
from videojam_jax.data import pipeline


@pytest.fixture
def fresh_reservations(monkeypatch):
  monkeypatch.setattr(open_files, "_shard_files", {})


def test_the_soft_limit_is_raised_for_many_shards(fresh_reservations):
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  if hard != resource.RLIM_INFINITY and hard < 2 * open_files.RESERVED_DESCRIPTORS + 64:
    pytest.fail(f"this machine's hard open-file limit ({hard}) is too low to test with")
  low = open_files.RESERVED_DESCRIPTORS + 32
  try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    open_files.reserve_shard_files("a[train]", 16)          # fits: nothing changes
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == low
    open_files.reserve_shard_files("a[train]", 16)          # the same split counts once
    assert open_files.descriptors_needed() == 16 + open_files.RESERVED_DESCRIPTORS
    open_files.reserve_shard_files("a[validation]", 32)     # 48 in all: over the soft limit
    raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert raised == hard or (hard == resource.RLIM_INFINITY and raised > low)
  finally:
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_hard_limit_too_low_fails_at_once_with_the_fixes():
  # In a child: lowering the hard limit cannot be undone.
  code = textwrap.dedent("""
      import resource
      from videojam_jax.data import open_files
      resource.setrlimit(resource.RLIMIT_NOFILE, (400, 400))
      try:
        open_files.reserve_shard_files("big[train]", 1000)
      except OSError as e:
        print("errno", e.errno, e.strerror)
      open_files.reserve_shard_files("small[train]", 100)   # the refused split is not counted
      print("needed", open_files.descriptors_needed())
      """)
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert f"errno {errno.EMFILE}" in result.stdout
  assert "big[train] has 1000 shard files" in result.stdout
  assert "hard limit is 400" in result.stdout and "--max_shard_mb" in result.stdout
  assert f"needed {100 + open_files.RESERVED_DESCRIPTORS}" in result.stdout


def test_out_of_files_is_not_called_a_corrupt_record():
  class OutOfFiles:
    def __len__(self):
      return 1

    def __getitem__(self, index):
      raise RuntimeError("open() failed: Too many open files; opening x.array_record-00402")

  source = pipeline.CheckedSource(OutOfFiles(), "fake[train]")
  with pytest.raises(OSError, match="run out of open files. Raise `ulimit -n`") as error:
    source[0]
  assert error.value.errno == errno.EMFILE
  assert not isinstance(error.value, pipeline.CorruptRecordError)


def test_a_dataset_with_more_shards_than_the_soft_limit_reads(tmp_path):
  """Without the raised limit this read fails part-way with "Too many open files"."""
  code = textwrap.dedent(f"""
      import os, resource
      import tensorflow_datasets as tfds
      from configs import quickstart
      from data_pipelines import synthetic_dataset
      from videojam_jax.data import pipeline, text
      config = quickstart.defaults()
      config.data.dataset_dir = {str(tmp_path)!r}
      config.data.num_frames, config.data.height, config.data.width = 2, 8, 8
      config.data.synthetic.num_train_clips = config.data.synthetic.num_eval_clips = 300
      builder = synthetic_dataset.builder_for(config)
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP, num_shards=300))
      soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
      resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
      iterator = iter(pipeline.create_dataset(config.data, "train", batch_size=50,
                                              captions=text.CaptionInputs(config.model.text)))
      for _ in range(6):   # one epoch: every shard
        next(iterator)
      print("RESULT", len(os.listdir("/proc/self/fd")), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
      """)
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT"))
  open_count, soft = map(int, line.split()[1:])
  assert open_count > 300 and soft > open_count   # a descriptor per shard, under the limit
