"""Headless Chromium driven over the DevTools protocol: open a page, run JS, screenshot.

No browser-automation package is needed: Chromium's --remote-debugging-pipe speaks the
DevTools protocol over two file descriptors. The page tests use it to check that the
comparison page's videos really play; `open_page` + `screenshot` make the pictures of
pages in docs/. Real time, not `--virtual-time-budget`: virtual time proved racy for media
(it can run out before autoplay's tasks run).
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import subprocess
import time
from typing import Any

CHROMIUM = "/usr/bin/chromium"   # Debian: apt-get install -y chromium
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync")
TIMEOUT_S = 30.0


class DevTools:
  """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe (a context
  manager: leaving it closes the browser).

  Chromium reads commands from fd 3 and writes replies to fd 4, one JSON
  message per NUL-terminated record.
  """

  def __init__(self, profile_dir: str | os.PathLike, *, chromium: str = CHROMIUM,
               window: tuple[int, int] = (1400, 1800), timeout: float = TIMEOUT_S):
    """timeout: seconds each command and awaited event may take (a loaded machine needs
    more: Chromium's start and a page of videos compete with the work running there)."""
    self.timeout = timeout
    to_child, self._writer = os.pipe()
    self._reader, from_child = os.pipe()

    def _wire_pipes():  # runs in the child before exec
      os.dup2(to_child, 3)
      os.dup2(from_child, 4)

    self.proc = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}",
         f"--window-size={window[0]},{window[1]}", "--remote-debugging-pipe", "about:blank"],
        preexec_fn=_wire_pipes, pass_fds=(3, 4, to_child, from_child),
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_child)
    os.close(from_child)
    self._buffer = b""
    self._next_id = 0
    self.events = []           # method names of the events seen
    self.event_messages = []   # the events themselves (method, params, sessionId)

  def _read_message(self, deadline: float) -> dict:
    while b"\0" not in self._buffer:
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not select.select([self._reader], [], [], remaining)[0]:
        raise TimeoutError("no reply from Chromium")
      chunk = os.read(self._reader, 1 << 16)
      if not chunk:
        raise RuntimeError("Chromium closed the DevTools pipe")
      self._buffer += chunk
    raw, self._buffer = self._buffer.split(b"\0", 1)
    return json.loads(raw)

  def call(self, method: str, session: str | None = None, timeout: float | None = None,
           **params: Any) -> dict:
    """Sends one DevTools command and returns its result (events seen meanwhile are kept)."""
    self._next_id += 1
    message = {"id": self._next_id, "method": method, "params": params}
    if session:
      message["sessionId"] = session
    os.write(self._writer, json.dumps(message).encode() + b"\0")
    deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
    while True:
      reply = self._read_message(deadline)
      if "method" in reply:
        self._keep(reply)
      elif reply.get("id") == self._next_id:
        if "error" in reply:
          raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

  def wait_for_event(self, method: str, timeout: float | None = None) -> None:
    """Returns once the event `method` (e.g. Page.loadEventFired) has arrived."""
    deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
    while method not in self.events:
      reply = self._read_message(deadline)
      if "method" in reply:
        self._keep(reply)

  def _keep(self, event: dict) -> None:
    self.events.append(event["method"])
    self.event_messages.append(event)

  def __enter__(self) -> "DevTools":
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def close(self) -> None:
    """Closes the browser (killing its process group if it does not exit)."""
    try:
      self.call("Browser.close", timeout=5)
    except (RuntimeError, TimeoutError, OSError):
      pass
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      os.killpg(self.proc.pid, signal.SIGKILL)  # the session we started, nothing else
      self.proc.wait()
    os.close(self._reader)
    os.close(self._writer)


def open_page(browser: DevTools, url: str) -> str:
  """Opens `url` in a new tab, waits for its load event, and returns the tab's session id."""
  target = browser.call("Target.createTarget", url="about:blank")["targetId"]
  session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
  browser.call("Page.enable", session=session)
  browser.call("Page.navigate", session=session, url=url)
  browser.wait_for_event("Page.loadEventFired")
  return session


def screenshot(browser: DevTools, session: str) -> bytes:
  """A PNG of the tab's viewport."""
  shot = browser.call("Page.captureScreenshot", session=session, format="png")
  return base64.b64decode(shot["data"])
