"""The HTML comparison page: structure, and that its videos play in headless Chromium.

The browser test drives Chromium over the DevTools protocol (report/headless_browser.py,
no extra packages) in real time: `--dump-dom --virtual-time-budget` proved racy for
media, since virtual time can run out before autoplay's tasks run. It is skipped
only when /usr/bin/chromium is absent (Debian: `apt-get install -y chromium`).
"""

import html.parser
import os

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from videojam_jax.data import motion_encoding
from videojam_jax.evaluation.report import headless_browser
from videojam_jax.evaluation.report import page
from videojam_jax.evaluation.report import plots

CHROMIUM = headless_browser.CHROMIUM
# Tall enough that every video is on screen: Chrome pauses muted autoplay video
# that is out of view, which would look like a failure here.
WINDOW = (1400, 1800)
TIMEOUT_S = headless_browser.TIMEOUT_S  # each DevTools call's limit; the probe fits in one
MIN_PLAYED_S = 0.3     # each video must have played this long, without our calling play()
T, H, W, FPS = 8, 32, 32, 8.0
DISPLAY_SIDE = 128     # 32 px clips are upscaled x4 for viewing
COLUMNS = ("baseline / CFG", "VideoJAM / CFG", "VideoJAM / Inner-Guidance")


def _clip(shift, seed):
  """A texture moving right by `shift` px/frame, and its true motion video."""
  big = np.random.default_rng(seed).random((H, W + T * shift, 3)).astype(np.float32)
  big = np.rint(cv2.GaussianBlur(big, (0, 0), 1.5) * 255).astype(np.uint8)
  x0 = T * shift
  video = np.stack([big[:, x0 - shift * t: x0 - shift * t + W] for t in range(T)])
  flows = np.broadcast_to(np.array([shift, 0.0], np.float32), (T - 1, H, W, 2))
  return video, motion_encoding.flows_to_motion_video(flows)


def _build_page(out_dir):
  """Two prompts x three columns (one cell left empty), a sweep table and plot."""
  rows = []
  for seed, prompt in enumerate(["a red ball rolls <left> & bounces", "waves on a beach"]):
    cells = {}
    for j, column in enumerate(COLUMNS):
      if seed == 1 and j == 1:
        continue  # a missing sample must not break the page
      video, motion = _clip(j + 1, seed)
      cells[column] = page.write_cell(
          out_dir / "videos", f"s{seed}_c{j}", video, motion, fps=FPS,
          metrics={"motion_smoothness": 0.99 - 0.01 * j, "dynamic_degree": 1.0})
    rows.append(page.Row(prompt, seed, cells))
  sweep = [{"w2": w2, "mode": mode, "seed": seed,
            "motion_smoothness": 0.9 + 0.01 * w2 + 0.001 * seed}
           for w2 in (0.0, 1.0, 3.0) for mode in ("cfg", "inner") for seed in (0, 1)]
  plot = plots.plot_sweep(sweep, "w2", ["motion_smoothness"], out_dir / "sweep.png",
                          group_key="mode")
  path = page.write_html(out_dir / "index.html", rows, COLUMNS, sweep=sweep, plots=[plot],
                         title="Samples <test>")
  return path, rows


class _Collector(html.parser.HTMLParser):
  """Collects tags and their attributes."""

  def __init__(self):
    super().__init__()
    self.tags = []

  def handle_starttag(self, tag, attrs):
    self.tags.append((tag, dict(attrs)))


def test_page_structure_and_relative_links(tmp_path):
  path, _ = _build_page(tmp_path)
  text = open(path, encoding="utf-8").read()
  parser = _Collector()
  parser.feed(text)
  videos = [attrs for tag, attrs in parser.tags if tag == "video"]
  assert len(videos) == 2 * 5  # 5 cells, each a video and its motion video
  for attrs in videos:
    assert {"autoplay", "loop", "muted", "playsinline"} <= set(attrs)
    assert not os.path.isabs(attrs["src"]) and "://" not in attrs["src"]
    assert (tmp_path / attrs["src"]).is_file()
  assert sum(attrs["src"].endswith(page.MOTION_SUFFIX + ".mp4") for attrs in videos) == 5
  # Self-contained: no external scripts, styles or images.
  for tag, attrs in parser.tags:
    for key in ("src", "href"):
      assert "://" not in attrs.get(key, ""), (tag, attrs)
  assert [attrs["src"] for tag, attrs in parser.tags if tag == "img"][-1] == "sweep.png"
  # Prompts and titles are escaped, metrics shown, the empty cell marked.
  assert "a red ball rolls &lt;left&gt; &amp; bounces" in text
  assert "Samples &lt;test&gt;" in text
  assert "<td>&mdash;</td>" in text
  assert "motion_smoothness" in text and "0.98" in text
  headers = [column for column in COLUMNS if f"<th>{column}</th>" in text]
  assert headers == list(COLUMNS)



def test_gif_cells_are_images_that_loop_the_frames(tmp_path):
  """video_format='gif' (a machine without imageio-ffmpeg): .gif files, shown as <img>."""
  video, motion = _clip(2, 0)
  cell = page.write_cell(tmp_path / "videos", "c", video, motion, fps=FPS, video_format="gif")
  assert cell.video.endswith("c.gif") and cell.motion.endswith("c" + page.MOTION_SUFFIX + ".gif")
  frames = iio.imread(cell.video, index=None)
  assert frames.shape[:3] == (T, DISPLAY_SIDE, DISPLAY_SIDE)   # every frame, upscaled x4
  # GIF is paletted: colours are approximate, positions exact.
  assert np.abs(frames[..., :3].astype(int)[:, ::4, ::4] - video.astype(int)).mean() < 8
  path = page.write_html(tmp_path / "index.html", [page.Row("p", 0, {"col": cell})], ["col"],
                         title="t")
  parser = _Collector()
  parser.feed(open(path, encoding="utf-8").read())
  assert not [attrs for tag, attrs in parser.tags if tag == "video"]
  sources = [attrs["src"] for tag, attrs in parser.tags if tag == "img"]
  assert "videos/c.gif" in sources and f"videos/c{page.MOTION_SUFFIX}.gif" in sources
  with pytest.raises(ValueError, match="video_format='avi'"):
    page.write_cell(tmp_path, "x", video, fps=FPS, video_format="avi")

# Resolves, in the page, once every video has played MIN_PLAYED_S (or failed), or
# at the deadline, with each video's state. We never call play(): this is autoplay.
_PROBE_JS = """new Promise(resolve => {
  const videos = [...document.querySelectorAll('video')];
  const played = v => v.played.length ? v.played.end(v.played.length - 1) : 0;
  const done = () => videos.every(v => v.error || played(v) >= %(min_played)f);
  const state = () => videos.map(v => ({src: v.getAttribute('src'), readyState: v.readyState,
      width: v.videoWidth, height: v.videoHeight, paused: v.paused, played: played(v),
      error: v.error ? v.error.code : null}));
  const start = Date.now();
  const poll = () => (done() || Date.now() - start > %(wait_ms)d) ? resolve(state())
                                                                   : setTimeout(poll, 50);
  poll();
})"""


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} absent; install with: apt-get install -y chromium")
def test_videos_play_in_headless_chromium(tmp_path):
  path, _ = _build_page(tmp_path)
  with headless_browser.DevTools(tmp_path / "profile", window=WINDOW) as browser:
    session = headless_browser.open_page(browser, f"file://{os.path.abspath(path)}")
    probe = _PROBE_JS % {"min_played": MIN_PLAYED_S, "wait_ms": 1000 * (TIMEOUT_S - 10)}
    result = browser.call("Runtime.evaluate", session=session, expression=probe,
                          awaitPromise=True, returnByValue=True)
    videos = result["result"]["value"]
    png = headless_browser.screenshot(browser, session)
  assert len(videos) == 10
  for video in videos:
    assert video["error"] is None, video                    # decoded: H.264 yuv420p
    assert (video["width"], video["height"]) == (DISPLAY_SIDE, DISPLAY_SIDE), video
    assert video["readyState"] >= 2, video                  # HAVE_CURRENT_DATA or better
    assert not video["paused"] and video["played"] >= MIN_PLAYED_S, video  # autoplaying
  (tmp_path / "screenshot.png").write_bytes(png)  # kept for a person to look at on failure
  screenshot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
  assert screenshot.shape[1] == WINDOW[0]  # the height excludes the (invisible) window frame
  # The videos are drawn: the page is not just white and text.
  saturation = cv2.cvtColor(screenshot, cv2.COLOR_BGR2HSV)[..., 1]
  assert np.mean(saturation > 60) > 0.02
