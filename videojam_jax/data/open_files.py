"""The open-file limit a process needs to read sharded clip datasets.

ArrayRecord keeps each shard file open once it has read from it, and every Grain
worker process holds its own readers. A process that reads a whole split at random
(a shuffled epoch) therefore ends up holding one descriptor per shard file. TFDS
sizes shards at up to 1 GiB of serialized records, so a million 8-frame 256x256 clips
(about 3 TB before ArrayRecord's compression) get 3072 shards, over Linux's usual soft
limit of 1024 descriptors: the read then fails part-way through the first epoch with
"Too many open files".

`reserve_shard_files` is called for every split a process opens. It raises the soft
limit (up to the hard limit, which an unprivileged process may do) before any shard
is read, or fails at once with the numbers and the two fixes.
"""

from __future__ import annotations

import errno
import resource

from absl import logging

# Descriptors kept for everything else a training process opens: checkpoints, event
# files, sockets, XLA's cache, the Python runtime.
RESERVED_DESCRIPTORS = 256

_shard_files: dict[str, int] = {}


def descriptors_needed() -> int:
  """Descriptors this process needs for the splits reserved so far, plus the reserve."""
  return sum(_shard_files.values()) + RESERVED_DESCRIPTORS


def reserve_shard_files(name: str, num_files: int) -> None:
  """Records that this process reads `num_files` shard files of `name` (a split) and
  makes sure the open-file limit holds every reserved split's files.

  Raises OSError(EMFILE) if even the hard limit is too low.
  """
  _shard_files[name] = int(num_files)
  needed = descriptors_needed()
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  if soft == resource.RLIM_INFINITY or needed <= soft:
    return
  if hard != resource.RLIM_INFINITY and needed > hard:
    del _shard_files[name]  # not read after all: later reservations need not count it
    raise OSError(
        errno.EMFILE,
        f"{name} has {num_files} shard files, and this process reads "
        f"{sum(_shard_files.values()) + num_files} in all (every split it opens); with "
        f"{RESERVED_DESCRIPTORS} more for everything else it needs {needed} open files, but "
        f"its hard limit is {hard}. Raise the limit (`ulimit -Hn`, /etc/security/limits.conf, "
        "or the container's nofile setting), or rebuild the dataset with larger shards "
        "(--max_shard_mb / data.max_shard_mb).")
  # Raise to the hard limit, not just to `needed`: splits opened later (evaluators) and
  # the worker processes Grain starts (they inherit limits) then need no further step.
  new_soft = hard if hard != resource.RLIM_INFINITY else max(needed, 2 * soft)
  resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
  logging.info("raised the open-file limit from %d to %d: the datasets read here have %d "
               "shard files", soft, new_soft, sum(_shard_files.values()))


def is_too_many_open_files(error: BaseException) -> bool:
  """Whether `error` is a failed open for lack of descriptors (ArrayRecord reports it
  as a RuntimeError whose message names it)."""
  if isinstance(error, OSError) and error.errno == errno.EMFILE:
    return True
  return "Too many open files" in str(error)
