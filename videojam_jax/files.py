"""Small file helpers shared by the library and the data builders.

Paths may be local or cloud (gs://, s3://, ...): everything goes through
`etils.epath`, which picks the backend (the OS for local paths; TensorFlow's
gfile or fsspec for cloud ones).

  atomic_write(path, data)      write a whole file so readers never see half of it
  atomic_open(path, mode)       the same, as a context manager yielding a file object
  json_digest(value, length)    a short, stable hash of a JSON-serialisable value
  is_local(path)                whether a path is on this machine's file system
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any

from etils import epath

DIGEST_LENGTH = 16   # hex characters of a json_digest: 64 bits, ample for naming things
TEXT_ENCODING = "utf-8"
# Characters of randomness in a temporary name: concurrent writers never collide.
_TMP_SUFFIX_CHARS = 8


def is_local(path: epath.PathLike) -> bool:
  """True for a path on the local file system, False for gs://, s3:// and other URIs."""
  return "://" not in os.fspath(path)


def _temporary_beside(path: epath.Path) -> epath.Path:
  """A hidden, unique name in the target's folder (so the rename stays in one file
  system, and on an object store in one bucket)."""
  return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:_TMP_SUFFIX_CHARS]}"


def atomic_write(path: epath.PathLike, data: str | bytes) -> epath.Path:
  """Writes `data` (str: UTF-8) to `path` as a whole; returns the path.

  The data goes to a temporary name beside the target, which is then renamed
  over it. Locally the rename is atomic (os.replace): a reader sees the old file
  or the new one, never a partial one, and a crash leaves the old file intact.
  On an object store (gs://) an object only appears once its upload completes,
  so readers never see a partial object either; the rename there is a copy. The
  folder must exist. If anything fails, the temporary is removed and the error
  propagates.
  """
  path = epath.Path(path)
  if isinstance(data, str):
    data = data.encode(TEXT_ENCODING)
  elif not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f"atomic_write({os.fspath(path)!r}): data must be str or bytes, "
                    f"got {type(data).__name__}")
  tmp = _temporary_beside(path)
  try:
    tmp.write_bytes(bytes(data))
    tmp.replace(path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


@contextlib.contextmanager
def atomic_open(path: epath.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
  """`with atomic_open(path) as f:` writes `path` as a whole when the block succeeds.

  mode: "w" (text, UTF-8, newlines written as given, e.g. for the csv module) or
  "wb". The contents are buffered in memory and written with `atomic_write` at
  the end of the block, so this suits small files (reports, JSON, CSV); if the
  block raises, `path` is left as it was.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open({os.fspath(path)!r}): mode must be 'w' or 'wb', got {mode!r}")
  # newline="": no translation, so what the caller writes is what lands on disk.
  buffer: IO[Any] = io.StringIO(newline="") if mode == "w" else io.BytesIO()
  yield buffer
  atomic_write(path, buffer.getvalue())


def json_digest(value: Any, length: int | None = DIGEST_LENGTH) -> str:
  """Hex SHA-256 of `value` as canonical JSON (sorted keys; non-JSON values as str()).

  Equal values give equal digests whatever their dict order. length: leading hex
  characters kept (None: all 64). Digests name things on disk (cache entries,
  dataset versions, sweep results), so this encoding must never change.
  """
  text = json.dumps(value, sort_keys=True, default=str)
  digest = hashlib.sha256(text.encode(TEXT_ENCODING)).hexdigest()
  if length is None:
    return digest
  if not 0 < length <= len(digest):
    raise ValueError(f"json_digest length must be in [1, {len(digest)}] or None, got {length}")
  return digest[:length]
