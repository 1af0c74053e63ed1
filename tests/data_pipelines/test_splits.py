"""Tests for data_pipelines/splits.py: train / validation assignment by file."""

import pytest

from data_pipelines import splits


def test_assignment_is_by_name_deterministic_and_sized():
  names = [f"videos/{i:03d}.mp4" for i in range(40)]
  split_of = splits.assign_splits(names, 0.1)
  assert set(split_of) == set(names) and set(split_of.values()) <= set(splits.SPLITS)
  validation = {n for n, s in split_of.items() if s == "validation"}
  assert len(validation) == 4
  # Independent of order; adding a file never moves a training file to validation.
  assert splits.assign_splits(list(reversed(names)), 0.1) == split_of
  grown = splits.assign_splits(names + ["videos/new.mp4"], 0.1)
  grown_validation = {n for n, s in grown.items() if s == "validation"}
  assert len(grown_validation) == 4 and grown_validation - {"videos/new.mp4"} <= validation


def test_small_sets_and_bad_fractions():
  assert list(splits.assign_splits(["a", "b"], 0.01).values()).count("validation") == 1
  assert splits.assign_splits(["only.mp4"], 0.5) == {"only.mp4": "train"}
  assert set(splits.assign_splits(["a", "b", "c"], 0.0).values()) == {"train"}
  for bad in (-0.1, 1.0):
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\)"):
      splits.assign_splits(["a"], bad)
