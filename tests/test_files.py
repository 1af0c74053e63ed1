"""Tests for videojam_jax/files.py: atomic writes (local and cloud paths), JSON digests.

Cloud paths are exercised for real through etils.epath's fsspec backend, with an
in-memory file system standing in for GCS (no network here): the `fake_gcs`
fixture, which other tests import.
"""

import hashlib
import importlib
import json
import os
import pathlib

import fsspec
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem
import pytest

from videojam_jax import files

GS_PREFIXES = ("gs://", "gcs://")


class FakeGCS(MemoryFileSystem):
  """fsspec's in-memory file system under the gs:// protocol, with its own store."""

  protocol = ("gs", "gcs")
  store = {}          # class-level in MemoryFileSystem: a fresh one, not shared with it
  pseudo_dirs = [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for prefix in GS_PREFIXES:
      if path.startswith(prefix):
        path = path[len(prefix):]
    path = path.strip("/")
    return "/" + path if path else ""


@pytest.fixture
def fake_gcs(monkeypatch):
  """gs:// paths, as epath sees them, backed by memory for the test's duration.

  epath sends gs:// to TensorFlow's gfile when TF is installed, else to fsspec's
  "gcs" implementation; the test takes the fsspec route and registers FakeGCS
  as that implementation (fsspec's registry is restored afterwards).
  """
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  # `fsspec.registry` is a read-only view; the module's dict is what lookups use.
  registry = importlib.import_module("fsspec.registry")._registry  # pylint: disable=protected-access
  monkeypatch.setitem(registry, "gcs", FakeGCS)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  FakeGCS.store.clear()
  FakeGCS.pseudo_dirs[:] = [""]
  yield FakeGCS
  FakeGCS.store.clear()
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def leftovers(folder) -> list[str]:
  """Names in `folder` other than the expected target files (temporaries)."""
  return sorted(p.name for p in epath.Path(folder).iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("as_type", [str, pathlib.Path, epath.Path])
def test_atomic_write_local_paths_of_any_type(tmp_path, as_type):
  target = as_type(tmp_path / "report.json")
  returned = files.atomic_write(target, '{"a": "é"}')
  assert os.fspath(returned) == os.fspath(target)
  assert (tmp_path / "report.json").read_bytes() == '{"a": "é"}'.encode("utf-8")
  files.atomic_write(target, b"\x00\x01 replaced")   # overwrites
  assert (tmp_path / "report.json").read_bytes() == b"\x00\x01 replaced"
  assert leftovers(tmp_path) == []


def test_atomic_write_failure_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  target = tmp_path / "result.json"
  target.write_text("old")

  def failing_replace(self, other):
    raise OSError("disk full")

  monkeypatch.setattr(type(epath.Path(target)), "replace", failing_replace)
  with pytest.raises(OSError, match="disk full"):
    files.atomic_write(target, "new")
  assert target.read_text() == "old" and leftovers(tmp_path) == []
  with pytest.raises(TypeError, match="must be str or bytes"):
    files.atomic_write(target, {"not": "bytes"})
  with pytest.raises(FileNotFoundError):  # the folder must exist
    files.atomic_write(tmp_path / "missing" / "x.json", "x")


def test_atomic_open_writes_only_when_the_block_succeeds(tmp_path):
  target = tmp_path / "table.csv"
  with files.atomic_open(target) as f:
    f.write("a,b\r\n1,2\n")
    assert not target.exists()           # nothing visible before the block ends
  assert target.read_bytes() == b"a,b\r\n1,2\n"   # newlines as written, not translated
  with pytest.raises(RuntimeError):
    with files.atomic_open(target) as f:
      f.write("half")
      raise RuntimeError("interrupted")
  assert target.read_bytes() == b"a,b\r\n1,2\n" and leftovers(tmp_path) == []
  with files.atomic_open(str(target), "wb") as f:
    f.write(b"\xff")
  assert target.read_bytes() == b"\xff"
  with pytest.raises(ValueError, match="mode must be"):
    with files.atomic_open(target, "a"):
      pass


def test_atomic_write_on_a_cloud_path(fake_gcs):
  folder = epath.Path("gs://bucket/results")
  folder.mkdir(parents=True, exist_ok=True)
  files.atomic_write("gs://bucket/results/summary.json", "first")
  files.atomic_write(folder / "summary.json", "second")
  with files.atomic_open("gs://bucket/results/table.csv") as f:
    f.write("x\n")
  assert (folder / "summary.json").read_text() == "second"
  assert (folder / "table.csv").read_text() == "x\n"
  # Only the targets are in the bucket: the temporaries were renamed away.
  assert sorted(fake_gcs.store) == ["/bucket/results/summary.json", "/bucket/results/table.csv"]


def test_is_local():
  assert files.is_local("/data/clips") and files.is_local(pathlib.Path("rel/dir"))
  assert not files.is_local("gs://bucket/clips") and not files.is_local(epath.Path("gs://b/c"))


def test_json_digest_is_the_digest_the_old_helpers_computed():
  value = {"step": 100, "key": "jam/cfg=3.0", "nested": {"b": [1, 2.5], "a": None},
           "path": pathlib.Path("/x/y")}   # not JSON: hashed as str()
  text = json.dumps(value, sort_keys=True, default=str)
  full = hashlib.sha256(text.encode()).hexdigest()
  # evaluation/sweep.fingerprint and the clip cache keys kept 16 hex digits;
  # the video dataset's inputs_digest all 64.
  assert files.json_digest(value) == full[:16]
  assert files.json_digest(value, length=None) == full
  assert files.json_digest(value, length=8) == full[:8]
  reordered = {"path": pathlib.Path("/x/y"), "nested": {"a": None, "b": [1, 2.5]},
               "key": "jam/cfg=3.0", "step": 100}
  assert files.json_digest(reordered) == files.json_digest(value)
  assert files.json_digest({**value, "step": 101}) != files.json_digest(value)
  with pytest.raises(ValueError, match="length"):
    files.json_digest(value, length=0)
