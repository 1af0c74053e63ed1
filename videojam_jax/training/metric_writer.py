"""TensorBoard metric writers that work with or without TensorFlow, and progress reports.

clu's writer (`clu.metric_writers.create_default_writer`) writes TensorBoard
event files through TensorFlow's summary API, and `import clu.metric_writers`
imports TensorFlow at module import time. TensorFlow is a large install that
nothing else in the system needs, so it is optional (requirements-tensorflow.txt):
where it is missing, `create_writer` writes the same event files through
tensorboardX, which only needs protobuf (requirements.txt).

Both backends produce what TensorBoard shows the same way: scalars, images
(one tag per name, the N images of a batch as N samples), texts and
hyperparameters (the hparams plugin's session start info), and both log every
scalar through absl in clu's `[step] name=value, ...` format.

Remote log dirs: clu's writer writes anywhere `tf.io.gfile` can (gs:// included).
tensorboardX writes local paths, `s3://` (needs boto3) and `gs://` (through
google-cloud-storage, in requirements.txt; it keeps the whole event file in
memory and uploads it again on every flush, fine for scalar curves but not for
image-heavy runs). For long runs on a Cloud TPU slice writing to gs://, install
requirements-tensorflow.txt.
"""

from __future__ import annotations

import datetime
import io
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from absl import logging
import numpy as np

BACKENDS = ("auto", "clu", "tensorboardx")
TENSORFLOW_REQUIREMENTS = "requirements-tensorflow.txt"
BASE_REQUIREMENTS = "requirements.txt"
# Tag of the scalar ProgressReporter writes (clu's ReportProgress used the same
# name, so existing TensorBoard dashboards keep their curve).
STEPS_PER_SEC_TAG = "steps_per_sec"

# TensorBoard's images plugin stores one tensor per tag and step:
# [width, height, png_0, ..., png_{N-1}] as strings (what tf.summary.image writes).
_IMAGES_PLUGIN = "images"
_IMAGE_CHANNELS = (1, 3, 4)   # grey, RGB, RGBA: the channel counts PNG (and TensorBoard) take


class Writer(Protocol):
  """The subset of clu's `MetricWriter` interface that the training loop uses."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None: ...

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None: ...

  def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

  def flush(self) -> None: ...

  def close(self) -> None: ...


class LoggingWriter:
  """Logs metrics through absl in the format of clu's `LoggingWriter`.

  clu's own LoggingWriter cannot be imported without TensorFlow (the package
  `clu.metric_writers` imports its TensorFlow summary writer on import), so its
  few formatting lines are repeated here, exactly: the end-to-end tests and
  users' log scrapers parse `[step] name=value, ...` lines.
  """

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
              for k, v in sorted(scalars.items())]
    logging.info("[%d] %s", step, ", ".join(values))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    logging.info("[%d] Got images: %s.", step, {k: np.shape(v) for k, v in images.items()})

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    logging.info("[%d] Got texts: %s.", step, texts)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info("[Hyperparameters] %s", hparams)

  def flush(self) -> None:
    logging.flush()

  def close(self) -> None:
    self.flush()


class TensorBoardXWriter:
  """Writes TensorBoard event files to `logdir` with tensorboardX (no TensorFlow).

  Events go through tensorboardX's background writer thread, so the calls do not
  block on file I/O. See the module docstring for the remote paths it supports.
  """

  def __init__(self, logdir: str):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._writer = tensorboardX.SummaryWriter(logdir=str(logdir))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), global_step=step)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    # tensorboardX's add_images tiles a batch into one grid image; written in the
    # images plugin's own layout instead, a batch shows as N samples under one
    # tag, as clu's writer shows it, whichever backend ran.
    from tensorboardX.proto import summary_pb2, tensor_pb2, tensor_shape_pb2  # pylint: disable=g-import-not-at-top
    values = []
    for name, batch in images.items():
      batch = _image_batch(name, batch)
      height, width = batch.shape[1:3]
      encoded = [str(width).encode(), str(height).encode()] + [_encode_png(im) for im in batch]
      tensor = tensor_pb2.TensorProto(
          dtype="DT_STRING", string_val=encoded,
          tensor_shape=tensor_shape_pb2.TensorShapeProto(
              dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(encoded))]))
      metadata = summary_pb2.SummaryMetadata(
          plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=_IMAGES_PLUGIN))
      values.append(summary_pb2.Summary.Value(tag=name, metadata=metadata, tensor=tensor))
    self._writer.file_writer.add_summary(summary_pb2.Summary(value=values), global_step=step)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    for name, text in texts.items():
      # tensorboardX's add_text tags it `name/text_summary`; clu's writer tags it `name`.
      proto = summary.text(name, text)
      proto.value[0].tag = name
      self._writer.file_writer.add_summary(proto, global_step=step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    # Only the session start info, into this run's own event file, as clu's
    # writer does (tensorboardX's add_hparams would open a separate sub-run).
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    _, session_start_info, _ = summary.hparams(dict(_flatten_hparams(hparams)), {})
    self._writer.file_writer.add_summary(session_start_info)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class _MultiWriter:
  """Forwards every call to each of `writers`, in order."""

  def __init__(self, writers: Sequence[Writer]):
    self._writers = tuple(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    for w in self._writers:
      w.write_images(step, images)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    for w in self._writers:
      w.write_texts(step, texts)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self) -> None:
    for w in self._writers:
      w.flush()

  def close(self) -> None:
    for w in self._writers:
      w.close()


def create_writer(logdir: str, *, is_main: bool, backend: str = "auto") -> Writer:
  """The metric writer for this process.

  Args:
    logdir: directory for the TensorBoard event files (local, or remote: see the
      module docstring for what each backend supports).
    is_main: whether this process writes event files. The others only log their
      metrics, as clu's `create_default_writer(just_logging=True)` does.
    backend: "auto" (clu's TensorFlow summary writer when TensorFlow imports,
      else tensorboardX), "clu" (TensorFlow required), or "tensorboardx".

  Returns:
    A writer with clu's `MetricWriter` methods (`write_scalars`, `write_images`,
    `write_texts`, `write_hparams`, `flush`, `close`); every backend logs scalars
    through absl as `[step] name=value, ...`.

  Raises:
    ValueError: for an unknown `backend`.
    ImportError: for backend "clu" where TensorFlow cannot be imported.
  """
  if backend not in BACKENDS:
    raise ValueError(f"metric writer backend={backend!r}; choose from {BACKENDS}")
  if not is_main:
    if backend == "clu":
      # Imported here too, so that a missing TensorFlow fails on every process alike.
      return _import_clu_writers(backend).create_default_writer(logdir, just_logging=True)
    logging.info("metric writer: this process only logs its metrics; the main process "
                 "writes the TensorBoard events")
    return LoggingWriter()

  if backend in ("auto", "clu"):
    try:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      if backend == "clu":
        raise _tensorflow_missing(backend, e) from e
      logging.info("metric writer: TensorFlow is not available (%s), so TensorBoard events "
                   "go to %s through tensorboardX. For clu's TensorFlow summary writer "
                   "(native gs:// support), pip install -r %s.", e, logdir,
                   TENSORFLOW_REQUIREMENTS)
    else:
      logging.info("metric writer: TensorBoard events go to %s through clu's TensorFlow "
                   "summary writer (backend=%r). Without TensorFlow, tensorboardX (in %s) "
                   "writes them.", logdir, backend, BASE_REQUIREMENTS)
      return metric_writers.create_default_writer(logdir, just_logging=False)
  else:
    logging.info("metric writer: TensorBoard events go to %s through tensorboardX "
                 "(backend='tensorboardx'). For clu's TensorFlow summary writer, "
                 "pip install -r %s.", logdir, TENSORFLOW_REQUIREMENTS)
  return _MultiWriter([LoggingWriter(), TensorBoardXWriter(logdir)])


class ProgressReporter:
  """Steps/s and ETA at synced points: what clu's `periodic_actions.ReportProgress` did.

  Call it with the current step right after the metrics of that step were
  fetched to the host: steps are dispatched asynchronously, and only at such
  synced points does the time between two calls measure the steps in between.
  The first call only sets the reference point (the time before it holds
  compilation, restoring, and the first batch); each later call writes
  `steps_per_sec` through `writer` and logs one progress line.
  """

  def __init__(self, writer: Writer | None, *, num_steps: int,
               clock: Callable[[], float] = time.monotonic):
    """`num_steps`: the step training ends at (for the ETA); `clock`: seconds, monotonic."""
    if num_steps <= 0:
      raise ValueError(f"ProgressReporter: num_steps={num_steps} must be positive")
    self._writer = writer
    self._num_steps = num_steps
    self._clock = clock
    self._previous: tuple[int, float] | None = None

  def __call__(self, step: int) -> float | None:
    """Reports progress at `step`; returns the steps/s since the previous call (None at the first)."""
    now = self._clock()
    if self._previous is None:
      self._previous = (step, now)
      return None
    previous_step, previous_time = self._previous
    if step < previous_step:
      raise ValueError(f"ProgressReporter: step={step} is before the previous report's "
                       f"step {previous_step}")
    elapsed = now - previous_time
    if step == previous_step or elapsed <= 0:
      return None   # nothing to measure; keep the reference point
    steps_per_sec = (step - previous_step) / elapsed
    eta = datetime.timedelta(seconds=round(max(self._num_steps - step, 0) / steps_per_sec))
    logging.info("[%d] progress: %.2f steps/s, %.1f%% (%d/%d), ETA %s", step, steps_per_sec,
                 100 * step / self._num_steps, step, self._num_steps, eta)
    if self._writer is not None:
      self._writer.write_scalars(step, {STEPS_PER_SEC_TAG: steps_per_sec})
    self._previous = (step, now)
    return steps_per_sec


def _import_clu_writers(backend: str):
  """clu.metric_writers (it imports TensorFlow), or an ImportError with an install hint."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise _tensorflow_missing(backend, e) from e
  return metric_writers


def _tensorflow_missing(backend: str, error: ImportError) -> ImportError:
  return ImportError(
      f"metric writer backend={backend!r} needs TensorFlow for clu's summary writer, and "
      f"importing it failed ({error}). Install it with `pip install -r {TENSORFLOW_REQUIREMENTS}`, "
      f"or choose backend 'tensorboardx' (or 'auto')")


def _image_batch(name: str, images: np.ndarray) -> np.ndarray:
  """`images` as uint8 [N, H, W, C] (a single [H, W, C] image gets N = 1)."""
  images = np.asarray(images)
  if images.ndim not in (3, 4) or images.shape[-1] not in _IMAGE_CHANNELS:
    raise ValueError(f"image {name!r} has shape {images.shape}; expected [N, H, W, C] or "
                     f"[H, W, C] with C in {_IMAGE_CHANNELS}")
  if images.dtype != np.uint8:
    raise ValueError(f"image {name!r} has dtype {images.dtype}; expected uint8")
  return images if images.ndim == 4 else images[None]


def _encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of one uint8 [H, W, C] image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # PIL takes a grey image as [H, W], not [H, W, 1].
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  out = io.BytesIO()
  pil.save(out, format="PNG")
  return out.getvalue()


def _flatten_hparams(hparams: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
  """(dotted name, value) pairs, flattened the way clu's writer flattens hparams.

  clu's flattening (clu.internal.utils.flatten_dict) imports jax, and this module
  stays light; repeated so that both backends record the same hparam names.
  """
  out = []
  for k, v in hparams.items():
    if isinstance(v, Mapping) or hasattr(v, "items"):
      out += _flatten_hparams(v, prefix + (k,))
    elif isinstance(v, (list, tuple)):
      out += _flatten_hparams({str(i): x for i, x in enumerate(v)}, prefix + (k,))
    else:
      out.append((".".join(prefix + (k,)), "" if v is None else v))
  return out
