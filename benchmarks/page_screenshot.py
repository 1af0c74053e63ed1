r"""A PNG of an HTML page (the evaluate / protocol comparison page) in headless Chromium.

  python -m benchmarks.page_screenshot --page workdirs/protocol/eval/index.html \
      --out docs/images/protocol_page.png

The page is opened in real time and given --wait_s for its videos to start looping
before the shot; the window is --width wide and --height tall (what fits is captured).
Needs /usr/bin/chromium (Debian: apt-get install -y chromium).
"""

import os
import tempfile
import time

from absl import app
from absl import flags

from videojam_jax import files
from videojam_jax.evaluation.report import headless_browser

_PAGE = flags.DEFINE_string("page", None, "HTML file (or URL) to open.")
_OUT = flags.DEFINE_string("out", None, "PNG to write.")
_WIDTH = flags.DEFINE_integer("width", 1400, "Window width in CSS pixels.")
_HEIGHT = flags.DEFINE_integer("height", 1800, "Window height in CSS pixels.")
_WAIT_S = flags.DEFINE_float("wait_s", 3.0, "Seconds between the load event and the shot.")
_TIMEOUT_S = flags.DEFINE_float("timeout_s", 120.0, "Seconds Chromium may take per step.")
flags.mark_flags_as_required(["page", "out"])


def main(argv):
  del argv
  if not os.path.exists(headless_browser.CHROMIUM):
    raise app.UsageError(f"{headless_browser.CHROMIUM} is absent (apt-get install -y chromium)")
  url = _PAGE.value if "://" in _PAGE.value else f"file://{os.path.abspath(_PAGE.value)}"
  if url.startswith("file://") and not os.path.isfile(url[len("file://"):]):
    raise app.UsageError(f"--page={_PAGE.value!r} is not a file")
  with tempfile.TemporaryDirectory() as profile:
    with headless_browser.DevTools(profile, window=(_WIDTH.value, _HEIGHT.value),
                                   timeout=_TIMEOUT_S.value) as browser:
      session = headless_browser.open_page(browser, url)
      time.sleep(_WAIT_S.value)
      png = headless_browser.screenshot(browser, session)
  files.atomic_write(_OUT.value, png)
  print(f"wrote {_OUT.value} ({len(png)} bytes)")


if __name__ == "__main__":
  app.run(main)
