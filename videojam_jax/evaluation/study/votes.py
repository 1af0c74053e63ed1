"""The votes of a study: one JSON object per line in <study_dir>/votes.jsonl, never rewritten.

A vote is appended, flushed and fsynced before the server answers the rater, so an
acknowledged vote survives a crash or a restart. A line torn by a crash mid-write
(never acknowledged) is kept on disk as it is, skipped when reading, and reported;
the next vote starts on a fresh line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from typing import Any

from absl import logging

VOTES_FILE = "votes.jsonl"
FIELDS = ("study", "rater", "trial", "choice", "client_ms", "server_s", "time")


@dataclasses.dataclass
class ReadResult:
  """The votes of a log and the line numbers (1-based) that could not be read."""
  votes: list[dict[str, Any]]
  bad_lines: list[int]


def read(path: str | os.PathLike) -> ReadResult:
  """Every well-formed vote of the log at `path` (none if it does not exist)."""
  votes, bad = [], []
  if not os.path.exists(path):
    return ReadResult(votes, bad)
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      try:
        vote = json.loads(raw)
        if not isinstance(vote, dict) or any(k not in vote for k in FIELDS):
          raise ValueError("not a vote")
      except ValueError:
        bad.append(number)
        continue
      votes.append(vote)
  if bad:
    logging.warning("%s: %d unreadable line(s) skipped (%s); they stay in the file", path,
                    len(bad), ", ".join(map(str, bad[:10])))
  return ReadResult(votes, bad)


class VoteLog:
  """Appends votes to a JSONL file, thread-safely, and knows who voted on what."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._lock = threading.Lock()
    existing = read(self.path)
    self.bad_lines = existing.bad_lines
    self.voted = {(v["rater"], v["trial"]) for v in existing.votes}
    self.count = len(existing.votes)
    self._needs_newline = False
    if os.path.exists(self.path) and os.path.getsize(self.path):
      with open(self.path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        self._needs_newline = f.read(1) != b"\n"   # a torn last line

  def has_voted(self, rater: str, trial: str) -> bool:
    with self._lock:
      return (rater, trial) in self.voted

  def votes_of(self, rater: str) -> set[str]:
    """The trials `rater` has voted on."""
    with self._lock:
      return {t for r, t in self.voted if r == rater}

  def append(self, vote: dict[str, Any]) -> bool:
    """Writes `vote` durably; False (and nothing written) if this rater already voted on
    this trial."""
    line = json.dumps(vote, sort_keys=True, allow_nan=False).encode() + b"\n"
    with self._lock:
      key = (vote["rater"], vote["trial"])
      if key in self.voted:
        return False
      with open(self.path, "ab") as f:
        if self._needs_newline:
          f.write(b"\n")
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
      self._needs_newline = False
      self.voted.add(key)
      self.count += 1
      return True
