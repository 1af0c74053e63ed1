"""Train / validation assignment, by file: clips of one video never straddle splits."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SPLITS = ("train", "validation")


def assign_splits(names: Sequence[str], validation_fraction: float) -> dict[str, str]:
  """name -> "train" | "validation", by file, deterministic in the names.

  Files are ranked by a hash of their name and the first round(fraction * n) go
  to validation (at least one when the fraction is > 0 and there are >= 2 files).
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  ranked = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
  num_val = round(validation_fraction * len(names))
  if validation_fraction > 0 and len(names) >= 2:
    num_val = max(num_val, 1)
  return {n: ("validation" if i < num_val else "train") for i, n in enumerate(ranked)}
