"""The comparison page: a self-contained HTML page for judging samples by eye.

One row per (prompt, seed), one column per model / guidance setting (e.g.
"baseline / CFG", "VideoJAM / CFG", "VideoJAM / Inner-Guidance"). Each cell
plays the generated clip and, beside it, the model's own motion output drawn
on the flow colour wheel, with the clip's motion metrics underneath. Below the
grid: a table of sweep metrics and any sweep plots.

`write_page` builds it from a sweep's results; `write_html` writes it from
rows of `Cell`s (for callers that are not sweeps); `write_cell` writes a
sample's videos and returns its `Cell`.

The page has inline CSS and no external resources; videos and images are
linked by paths relative to the page, so the folder can be copied or served
as is. Videos autoplay muted and loop (browsers only autoplay muted video).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
from etils import epath
import numpy as np

from videojam_jax import files
from videojam_jax.data import motion_encoding
from videojam_jax.data import video_io
from videojam_jax.evaluation.report import fields
from videojam_jax.evaluation.report import tables

MOTION_SUFFIX = "_motion"
VIDEO_FORMATS = ("mp4", "gif")
_LEGEND_SIDE = 64  # pixels of the colour-wheel legend
# Which direction is better, shown on the page (evaluation/motion_metrics.py defines them).
METRIC_NOTES = {
    "warping_error": "lower is better",
    "motion_smoothness": "higher is better",
    "dynamic_degree": "fraction of clips that move",
    "dynamic_magnitude": "pixels per frame, top 5% of flow",
    "temporal_flickering": "higher is steadier",
    "motion_epe": "lower: the model's motion output matches its frames",
}
_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: center; }
th { background: #f3f3f3; }
td.prompt { text-align: left; max-width: 16em; }
video, figure img, img.plot { image-rendering: pixelated; }
.pair { display: flex; gap: 4px; justify-content: center; }
figure { margin: 0; }
figcaption { font-size: 11px; color: #666; }
table.metrics td, table.metrics th { border: none; padding: 1px 4px; font-size: 12px; }
table.metrics td.value { text-align: right; font-family: monospace; }
.legend { display: flex; align-items: center; gap: 8px; font-size: 13px; }
"""


@dataclasses.dataclass(frozen=True)
class Cell:
  """One generated sample: its video file, its motion video file, its metrics."""
  video: str
  motion: str | None = None
  metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Row:
  """One (prompt, seed) and its samples, keyed by column name."""
  prompt: str
  seed: int
  cells: Mapping[str, Cell]


def write_cell(out_dir: str | os.PathLike, name: str, video: np.ndarray,
               motion_video: np.ndarray | None = None, *, fps: float,
               sigma: float = motion_encoding.DEFAULT_SIGMA,
               metrics: Mapping[str, float] | None = None,
               min_side: int = video_io.DEFAULT_MIN_SIDE, video_format: str = "mp4") -> Cell:
  """Writes `name`.mp4 (and `name`_motion.mp4, drawn with `video_io.motion_panel`) to out_dir.

  `video` and `motion_video` are uint8 [T, H, W, 3]; the motion video is the
  encoded one the model outputs. `video_format` 'gif' writes .gif files instead
  (no ffmpeg needed; the page shows them as images). Returns the `Cell` that
  points at the files.
  """
  if video_format not in VIDEO_FORMATS:
    raise ValueError(f"video_format={video_format!r}: must be one of {VIDEO_FORMATS}")
  os.makedirs(out_dir, exist_ok=True)
  video_path = video_io.write_video(os.path.join(out_dir, f"{name}.{video_format}"), video, fps,
                                    min_side)
  motion_path = None
  if motion_video is not None:
    motion_path = video_io.write_video(
        os.path.join(out_dir, f"{name}{MOTION_SUFFIX}.{video_format}"),
        video_io.motion_panel(motion_video, sigma), fps, min_side)
  return Cell(video_path, motion_path, dict(metrics or {}))


def _format_value(value: object) -> str:
  if isinstance(value, (float, np.floating)):
    return f"{float(value):.4g}"
  return str(value)


def _relative(path: str | os.PathLike, page_dir: str) -> str:
  """A URL-style link to `path` relative to the page's folder."""
  return os.path.relpath(os.path.abspath(path), page_dir).replace(os.sep, "/")


def _video_tag(src: str, caption: str) -> str:
  if src.lower().endswith(".gif"):  # a GIF loops by itself; browsers play it as an image
    return (f'<figure><img src="{html.escape(src)}" title="{html.escape(caption)}" '
            f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>')
  return (f'<figure><video src="{html.escape(src)}" title="{html.escape(caption)}" '
          'autoplay loop muted playsinline preload="auto"></video>'
          f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _cell_html(cell: Cell | None, page_dir: str) -> str:
  if cell is None:
    return "<td>&mdash;</td>"
  videos = [_video_tag(_relative(cell.video, page_dir), "video")]
  if cell.motion is not None:
    videos.append(_video_tag(_relative(cell.motion, page_dir), "motion"))
  metric_rows = "".join(
      f'<tr><th>{html.escape(key)}</th><td class="value">{_format_value(value)}</td></tr>'
      for key, value in cell.metrics.items())
  metrics = f'<table class="metrics">{metric_rows}</table>' if metric_rows else ""
  return f'<td><div class="pair">{"".join(videos)}</div>{metrics}</td>'


def _sweep_table_html(sweep: Sequence[Mapping[str, object]]) -> str:
  keys: list[str] = []
  for record in sweep:  # union of keys, in first-seen order
    keys += [key for key in record if key not in keys]
  header = "".join(f"<th>{html.escape(key)}</th>" for key in keys)
  body = "".join(
      "<tr>" + "".join(f"<td>{html.escape(_format_value(record.get(key, '')))}</td>"
                       for key in keys) + "</tr>"
      for record in sweep)
  return f'<table class="sweep"><tr>{header}</tr>{body}</table>'


def _colour_wheel_legend() -> str:
  """An inline PNG (data URI) of the colour wheel: colour = direction of motion."""
  coords = np.linspace(-1.0, 1.0, _LEGEND_SIDE, dtype=np.float32)
  flow = np.stack(np.meshgrid(coords, coords), axis=-1)  # (dx, dy), +y is down
  flow[np.linalg.norm(flow, axis=-1) > 1.0] = 0.0
  image = motion_encoding.flow_to_colour_wheel(flow, max_magnitude=1.0)
  ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  assert ok, "PNG encoding of the legend failed"
  return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def write_html(path: epath.PathLike, rows: Sequence[Row], columns: Sequence[str], *,
               title: str = "VideoJAM samples",
               sweep: Sequence[Mapping[str, object]] = (),
               plots: Sequence[epath.PathLike] = (), notes: str = "") -> str:
  """Writes the comparison page to `path` (an .html file); returns the path.

  rows: one per (prompt, seed), each mapping column names to `Cell`s (a missing
  column shows a dash). columns: the column order. sweep: records (dicts) shown
  as a table, e.g. one per swept guidance weight with its mean metrics.
  plots: PNG files (e.g. from `plots.plot_sweep`) shown below the table. Files are
  linked relative to the page's folder, so write them beside or below it.
  """
  path = os.fspath(path)
  page_dir = os.path.dirname(os.path.abspath(path))
  head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
  body = []
  for row in rows:
    cells = "".join(_cell_html(row.cells.get(column), page_dir) for column in columns)
    body.append(f'<tr><td class="prompt">{html.escape(row.prompt)}<br>'
                f"<small>seed {row.seed}</small></td>{cells}</tr>")
  parts = [
      "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
      f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
      f"<h1>{html.escape(title)}</h1>",
  ]
  if notes:
    parts.append(f"<p>{html.escape(notes)}</p>")
  parts.append(
      f'<div class="legend"><img src="{_colour_wheel_legend()}" alt="colour wheel" '
      f'width="{_LEGEND_SIDE}" height="{_LEGEND_SIDE}"><span>Each cell: the video, then the '
      "model's own motion output decoded to optical flow (hue = direction as on this "
      "wheel, saturation = speed, white = still).</span></div>")
  parts.append(f'<table class="grid"><tr><th>prompt</th>{head}</tr>{"".join(body)}</table>')
  if sweep:
    parts += ["<h2>Sweep</h2>", _sweep_table_html(sweep)]
  for plot in plots:
    parts.append(f'<p><img class="plot" src="{html.escape(_relative(plot, page_dir))}" '
                 f'alt="{html.escape(os.path.basename(plot))}"></p>')
  parts.append("</body></html>")
  files.atomic_write(path, "\n".join(parts) + "\n")
  return path


def write_page(results: Sequence[Mapping[str, Any]], runs_root: epath.PathLike,
               path: epath.PathLike, *, title: str, plots: Sequence[epath.PathLike] = (),
               notes: Sequence[str] = ()) -> str:
  """The side-by-side page of a sweep: one row per (prompt, seed), one column per (model, setting).

  results: as `result_store.run_jobs` returns them, their clips' files under
  `runs_root/<key>/`. Below the grid: the summary table (mean ± std per metric),
  `plots`, and `notes` followed by what each metric means. Returns the page's path.
  """
  varying = fields.varying_fields(results)
  names = fields.metric_names(results)
  columns = [fields.column_label(r, varying) for r in results]
  rows: dict[tuple[int, int], Row] = {}
  for result, column in zip(results, columns):
    folder = epath.Path(runs_root).joinpath(*result["key"].split("/"))
    for clip in result["clips"]:
      key = (clip["prompt_index"], clip["seed"])
      row = rows.setdefault(key, Row(clip["prompt"], clip["seed"], {}))
      row.cells[column] = Cell(
          os.fspath(folder / clip["video"]),
          None if clip.get("motion") is None else os.fspath(folder / clip["motion"]),
          {k: fields.metric_value(v) for k, v in clip["metrics"].items()})
  sweep_table = []
  for row in tables.summary_rows(results):
    record = {"model": row["model"], "setting": row["setting"], "step": row["checkpoint_step"],
              "clips": row["num_clips"]}
    for name in names:
      mean, std = row[f"{name}_mean"], row[f"{name}_std"]
      record[name] = "" if math.isnan(mean) else f"{mean:.4g} ± {std:.2g}"
    sweep_table.append(record)
  metric_help = "; ".join(f"{k}: {METRIC_NOTES[k]}" for k in names if k in METRIC_NOTES)
  text = " ".join(list(notes) + ([f"Metrics — {metric_help}."] if metric_help else []))
  return write_html(path, [rows[k] for k in sorted(rows)], columns, title=title,
                    sweep=sweep_table, plots=plots, notes=text)
