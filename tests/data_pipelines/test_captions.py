"""Tests for data_pipelines/captions.py: finding videos, reading and matching captions."""

import json
import os

import pytest

from data_pipelines import captions


def touch(path) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"\0")
  return os.path.realpath(path)


def test_find_videos_by_extension_in_a_folder_and_anything_a_glob_names(tmp_path):
  a = touch(tmp_path / "a.mp4")
  b = touch(tmp_path / "deep" / "er" / "B.MOV")    # any case, any depth
  touch(tmp_path / "notes.txt")
  clip = touch(tmp_path / "clip.bin")
  assert captions.find_videos(str(tmp_path)) == sorted([a, b])
  assert captions.find_videos(str(tmp_path / "*.bin")) == [clip]   # a glob: no extension filter


def test_jsonl_and_csv_captions_resolve_paths_beside_the_file(tmp_path):
  video = touch(tmp_path / "videos" / "one.mp4")
  other = touch(tmp_path / "elsewhere" / "two.mp4")
  jsonl = tmp_path / "videos" / "captions.jsonl"
  jsonl.write_text("\n".join(json.dumps(r) for r in [
      {"video": "one.mp4", "caption": "first"},
      {"video": other, "caption": "absolute"},
      {"video": "./one.mp4", "caption": "a different second caption"},
  ]) + "\n\n")
  found, warnings = captions.load_captions(str(jsonl))
  assert found == {video: "first", other: "absolute"}
  assert len(warnings) == 1 and ":3: second caption for ./one.mp4 ignored" in warnings[0]
  csv_file = tmp_path / "videos" / "captions.csv"
  csv_file.write_bytes('\ufeffvideo,caption\none.mp4,"commas, kept"\n'.encode("utf-8"))  # Excel BOM
  assert captions.load_captions(str(csv_file)) == ({video: "commas, kept"}, [])


def test_malformed_captions(tmp_path):
  bad = tmp_path / "captions.jsonl"
  bad.write_text('{"video": "a.mp4", "caption": "ok"}\n{not json\n')
  with pytest.raises(captions.CaptionsError, match=":2:"):
    captions.load_captions(str(bad))
  bad.write_text('["a.mp4", "ok"]\n')
  with pytest.raises(captions.CaptionsError, match=":1: expected an object, got list"):
    captions.load_captions(str(bad))
  bad.write_text('{"video": "a.mp4", "caption": 3}\n')
  with pytest.raises(captions.CaptionsError, match=":1: needs a 'video' path and a 'caption'"):
    captions.load_captions(str(bad))
  csv_file = tmp_path / "captions.csv"
  csv_file.write_text("file,text\na.mp4,hello\n")
  with pytest.raises(captions.CaptionsError, match="columns"):
    captions.load_captions(str(csv_file))


def test_match_captions_skips_uncaptioned_and_missing_files(tmp_path):
  listed = touch(tmp_path / "clips" / "listed.mp4")
  blank = touch(tmp_path / "clips" / "blank.mp4")
  stray = touch(tmp_path / "clips" / "stray.mp4")
  missing = os.path.realpath(tmp_path / "clips" / "gone.mp4")
  caption_map = {listed: "a cat", blank: "  ", missing: "never recorded"}
  path = str(tmp_path / "captions.jsonl")
  sources, skipped = captions.match_captions([listed, blank, stray], caption_map, path)
  assert [(s.path, s.name, s.caption) for s in sources] == [
      (listed, os.path.join("clips", "listed.mp4"), "a cat")]
  assert [(s.path, s.reason) for s in skipped] == [(blank, "no_caption"), (stray, "no_caption")]
  # No video list: the captions define the set; rows naming missing files are skipped.
  sources, skipped = captions.match_captions(None, caption_map, path)
  assert [s.path for s in sources] == [listed]
  assert sorted((s.path, s.reason) for s in skipped) == sorted(
      [(missing, "missing_file"), (blank, "no_caption")])


def test_relative_names_prefer_the_captions_folder():
  inside = ["/data/set/a/x.mp4", "/data/set/b/y.mp4"]
  assert captions.relative_names(inside, "/data/set") == ["a/x.mp4", "b/y.mp4"]
  outside = ["/videos/cats/x.mp4", "/videos/dogs/y.mp4"]   # not under the preferred root
  assert captions.relative_names(outside, "/data/set") == ["cats/x.mp4", "dogs/y.mp4"]
  assert captions.relative_names([], "/data/set") == []
