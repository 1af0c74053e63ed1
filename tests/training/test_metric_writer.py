"""Tests for the TensorBoard metric writers and progress reports (videojam_jax/training/metric_writer.py)."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from tests.conftest import HIDE_TENSORFLOW
from tests.conftest import REPO
from videojam_jax.training import metric_writer

# The line format the end-to-end tests parse out of the train command's log.
E2E_LOSS_LINE = re.compile(r"\[(\d+)\] train/.*train/loss=")

_RNG = np.random.default_rng(0)
SCALARS = {1: {"train/loss": 0.5, "train/grad_norm": 3}, 2: {"train/loss": 0.25, "train/grad_norm": 2}}
IMAGE_STEP = 2
IMAGES = {"samples/video": _RNG.integers(0, 256, (2, 6, 8, 3), dtype=np.uint8),   # a batch of 2
          "samples/motion": _RNG.integers(0, 256, (6, 8, 1), dtype=np.uint8)}     # one grey image
TEXTS = {"samples/captions": "a red ball\nbounces to the left"}
HPARAMS = {"optim": {"learning_rate": 1e-4}, "model.name": "dit", "model.jam": True,
           "train.batch_size": 8}
HPARAMS_FLAT = {"optim.learning_rate": 1e-4, "model.name": "dit", "model.jam": True,
                "train.batch_size": 8.0}   # TensorBoard stores every number as a double


def write_sample_metrics(writer: metric_writer.Writer) -> None:
  writer.write_hparams(HPARAMS)
  for step, scalars in SCALARS.items():
    writer.write_scalars(step, scalars)
  writer.write_images(IMAGE_STEP, IMAGES)
  writer.write_texts(IMAGE_STEP, TEXTS)
  writer.close()


def read_events(logdir) -> tuple[dict[str, tuple[str, list[tuple[int, np.ndarray]]]], dict]:
  """({tag: (plugin, [(step, value)])}, {hparam: value}) as TensorBoard itself reads them.

  The plugin event accumulator is what the TensorBoard server uses (and it reads
  without TensorFlow); unlike the classic EventAccumulator it migrates
  legacy summaries (tensorboardX's scalars) into the tensor form that TensorFlow's
  summary ops write, so both backends read back alike.
  """
  acc = plugin_event_accumulator.EventAccumulator(
      str(logdir), size_guidance={plugin_event_accumulator.TENSORS: 0})
  acc.Reload()
  hparams_tags = (acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
                  if hparams_metadata.PLUGIN_NAME in acc.ActivePlugins() else {})
  tensors = {tag: (acc.SummaryMetadata(tag).plugin_data.plugin_name,
                   [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)])
             for tag in acc.Tags()["tensors"] if tag not in hparams_tags}
  hparams = {}
  for content in hparams_tags.values():
    start = hparams_metadata.parse_session_start_info_plugin_data(content)
    hparams.update({k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()})
  return tensors, hparams


def decode_images(value: np.ndarray) -> tuple[int, int, list[np.ndarray]]:
  """(width, height, images) of an images-plugin tensor [width, height, png...]."""
  width, height, *pngs = value.ravel()
  return int(width), int(height), [np.asarray(Image.open(io.BytesIO(png))) for png in pngs]


def check_sample_events(logdir) -> None:
  tensors, hparams = read_events(logdir)
  assert set(tensors) == {*SCALARS[1], *IMAGES, *TEXTS}
  for tag in SCALARS[1]:
    plugin, events = tensors[tag]
    assert plugin == "scalars"
    assert [s for s, _ in events] == list(SCALARS)
    np.testing.assert_allclose([float(v) for _, v in events], [SCALARS[s][tag] for s in SCALARS])
  for tag, images in IMAGES.items():
    plugin, events = tensors[tag]
    assert plugin == "images" and [s for s, _ in events] == [IMAGE_STEP]
    width, height, decoded = decode_images(events[0][1])
    batch = images if images.ndim == 4 else images[None]
    assert (width, height) == (batch.shape[2], batch.shape[1])
    assert len(decoded) == batch.shape[0]      # one sample per image, not a tiled grid
    for got, want in zip(decoded, batch):
      np.testing.assert_array_equal(got, want[..., 0] if want.shape[-1] == 1 else want)
  plugin, events = tensors["samples/captions"]
  assert plugin == "text" and [s for s, _ in events] == [IMAGE_STEP]
  assert events[0][1].ravel()[0].decode() == TEXTS["samples/captions"]
  assert hparams == pytest.approx(HPARAMS_FLAT)


@pytest.mark.parametrize("backend, note", [
    ("tensorboardx", "through tensorboardX"),
    ("clu", "through clu's TensorFlow summary writer"),
    # TensorFlow is installed in the test environment (requirements-dev.txt).
    ("auto", "through clu's TensorFlow summary writer"),
])
def test_backends_write_events_tensorboard_reads_back(backend, note, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  writer = metric_writer.create_writer(str(tmp_path), is_main=True, backend=backend)
  assert any(note in r.getMessage() for r in caplog.records)
  write_sample_metrics(writer)
  check_sample_events(tmp_path)
  # Every backend logs the scalars too, in the format the e2e tests parse.
  assert any(E2E_LOSS_LINE.match(r.getMessage()) for r in caplog.records)


def test_logging_writer_logs_like_clus(caplog):
  from clu.metric_writers import logging_writer  # pylint: disable=g-import-not-at-top
  caplog.set_level(logging.INFO, logger="absl")

  def messages(writer) -> list[str]:
    caplog.clear()
    writer.write_scalars(7, {"train/loss": 1 / 3, "train/grad_norm": 2, "train/video_loss": np.float32(0.5)})
    writer.write_images(7, IMAGES)
    writer.write_texts(7, TEXTS)
    writer.write_hparams(HPARAMS)
    return [r.getMessage() for r in caplog.records]

  ours = messages(metric_writer.LoggingWriter())
  assert ours == messages(logging_writer.LoggingWriter())
  assert ours[0] == "[7] train/grad_norm=2, train/loss=0.333333, train/video_loss=0.5"
  assert E2E_LOSS_LINE.match(ours[0]).group(1) == "7"


def test_non_main_process_only_logs(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  logdir = tmp_path / "logs"
  writer = metric_writer.create_writer(str(logdir), is_main=False)
  writer.write_scalars(3, {"train/grad_norm": 1.0, "train/loss": 0.5})
  writer.write_images(3, IMAGES)
  writer.close()
  assert not logdir.exists()
  assert "[3] train/grad_norm=1, train/loss=0.5" in [r.getMessage() for r in caplog.records]


def test_unknown_backend_is_an_error(tmp_path):
  with pytest.raises(ValueError, match=r"backend='tf'; choose from \('auto', 'clu', 'tensorboardx'\)"):
    metric_writer.create_writer(str(tmp_path), is_main=True, backend="tf")


@pytest.mark.parametrize("image, message", [
    (np.zeros((2, 4, 4, 3), np.float32), r"image 'bad' has dtype float32; expected uint8"),
    (np.zeros((4, 4, 2), np.uint8), r"image 'bad' has shape \(4, 4, 2\); expected"),
    (np.zeros((4, 4), np.uint8), r"image 'bad' has shape \(4, 4\); expected"),
])
def test_tensorboardx_rejects_bad_images(image, message, tmp_path):
  writer = metric_writer.TensorBoardXWriter(str(tmp_path))
  with pytest.raises(ValueError, match=message):
    writer.write_images(1, {"bad": image})
  writer.close()


_WITHOUT_TENSORFLOW = HIDE_TENSORFLOW + "import json\n"


def test_auto_without_tensorflow_uses_tensorboardx(tmp_path):
  images = tmp_path / "images.npy"
  np.save(images, IMAGES["samples/video"])
  code = _WITHOUT_TENSORFLOW + textwrap.dedent(f"""
      import numpy as np
      from absl import logging
      from videojam_jax.training import metric_writer
      logging.set_verbosity(logging.INFO)
      writer = metric_writer.create_writer({str(tmp_path / "logs")!r}, is_main=True)
      writer.write_scalars(3, {{"train/grad_norm": 1.5, "train/loss": 0.5}})
      writer.write_images(3, {{"samples/video": np.load({str(images)!r})}})
      writer.close()
      try:
        metric_writer.create_writer({str(tmp_path / "clu")!r}, is_main=True, backend="clu")
        clu_error = None
      except ImportError as e:
        clu_error = str(e)
      print(json.dumps({{"clu_error": clu_error,
                        "tensorflow": [m for m in sys.modules if m.partition(".")[0] == "tensorflow"]}}))
      """)
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=False)
  assert run.returncode == 0, run.stderr
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result["tensorflow"] == []                       # never imported, not even in part
  assert "pip install -r requirements-tensorflow.txt" in result["clu_error"]
  assert "TensorFlow is not available" in run.stderr and "through tensorboardX" in run.stderr
  assert "requirements-tensorflow.txt" in run.stderr
  assert re.search(r"\[3\] train/grad_norm=1.5, train/loss=0.5", run.stderr)
  tensors, _ = read_events(tmp_path / "logs")
  assert set(tensors) == {"train/grad_norm", "train/loss", "samples/video"}
  assert [(s, float(v)) for s, v in tensors["train/loss"][1]] == [(3, 0.5)]
  _, _, decoded = decode_images(tensors["samples/video"][1][0][1])
  np.testing.assert_array_equal(np.stack(decoded), IMAGES["samples/video"])
  assert not (tmp_path / "clu").exists()


class FakeClock:
  """Returns the given times in order, one per call."""

  def __init__(self, *times: float):
    self._times = list(times)

  def __call__(self) -> float:
    return self._times.pop(0)


class RecordingWriter:
  """Records write_scalars calls (the only method ProgressReporter uses)."""

  def __init__(self):
    self.scalars: list[tuple[int, dict]] = []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))


def test_progress_reporter_steps_per_sec_and_eta(caplog):
  caplog.set_level(logging.INFO, logger="absl")
  writer = RecordingWriter()
  report = metric_writer.ProgressReporter(writer, num_steps=100,
                                          clock=FakeClock(100.0, 105.0, 106.0, 145.0))
  # The first call is the reference point: the time before it holds compilation.
  assert report(10) is None and writer.scalars == []
  assert report(20) == pytest.approx(2.0)          # 10 steps in 5 s
  assert writer.scalars == [(20, {"steps_per_sec": pytest.approx(2.0)})]
  assert caplog.records[-1].getMessage() == "[20] progress: 2.00 steps/s, 20.0% (20/100), ETA 0:00:40"
  # Nothing new to measure: the reference point stays at (20, 105 s).
  assert report(20) is None and len(writer.scalars) == 1
  assert report(100) == pytest.approx(2.0)         # 80 steps in 40 s since step 20
  assert writer.scalars[-1] == (100, {"steps_per_sec": pytest.approx(2.0)})
  assert caplog.records[-1].getMessage() == "[100] progress: 2.00 steps/s, 100.0% (100/100), ETA 0:00:00"


def test_progress_reporter_eta_spans_hours_and_works_without_writer(caplog):
  caplog.set_level(logging.INFO, logger="absl")
  report = metric_writer.ProgressReporter(None, num_steps=50_000, clock=FakeClock(0.0, 100.0))
  report(0)
  assert report(50) == pytest.approx(0.5)
  # 49,950 steps at 0.5 steps/s = 99,900 s.
  assert caplog.records[-1].getMessage().endswith("0.1% (50/50000), ETA 1 day, 3:45:00")


def test_progress_reporter_rejects_bad_input():
  with pytest.raises(ValueError, match=r"num_steps=0 must be positive"):
    metric_writer.ProgressReporter(None, num_steps=0)
  report = metric_writer.ProgressReporter(None, num_steps=10, clock=FakeClock(0.0, 1.0))
  report(5)
  with pytest.raises(ValueError, match=r"step=4 is before the previous report's step 5"):
    report(4)
