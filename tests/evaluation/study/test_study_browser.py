"""The study end to end in headless Chromium: two raters vote through the page's own
buttons, the server (the real `study` command) restarts midway, and the tally agrees.

Also checks that sides were balanced and that no HTML or network response the raters'
browsers received names an arm. Skipped only when /usr/bin/chromium is absent (Debian:
`apt-get install -y chromium`).
"""

import base64
import csv
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.evaluation.study.conftest import ARM_A, ARM_B
from videojam_jax.evaluation.report import headless_browser

CHROMIUM = headless_browser.CHROMIUM
SECRETS = (ARM_A, ARM_B, "baseline", "videojam", "inner_w1", "cfg_w1", "shuffled", "left_arm")
START_TIMEOUT_S = 60.0
TRIAL_TIMEOUT_S = 30.0


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_study(port, study_dir, *extra):
  """The real `study` command; returns (process, study URL) once it serves."""
  proc = subprocess.Popen(
      [sys.executable, "-m", "videojam_jax.study", f"--study_dir={study_dir}",
       f"--config.server.port={port}", "--config.attention.fraction=0.34",
       "--config.repeat_fraction=0.34", *extra],
      cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + START_TIMEOUT_S
  output = []
  while time.monotonic() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    output.append(line)
    if line.startswith("serving study"):
      return proc, line.split(" at ")[1].split()[0]
  proc.kill()
  raise AssertionError("study command did not start:\n" + "".join(output))


def stop(proc):
  proc.send_signal(2)   # Ctrl-C
  out, _ = proc.communicate(timeout=30)
  assert proc.returncode == 0, out
  return out


class Rater:
  """One tab of the browser, logged in as `name`."""

  def __init__(self, browser, name, url):
    self.browser, self.name = browser, name
    self.target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    self.session = browser.call("Target.attachToTarget", targetId=self.target,
                                flatten=True)["sessionId"]
    for domain in ("Page", "Network", "Runtime"):
      browser.call(f"{domain}.enable", session=self.session)
    browser.call("Page.navigate", session=self.session, url=f"{url}?rater={name}")
    self.last_trial = None
    self.html = []

  def eval(self, expression):
    result = self.browser.call("Runtime.evaluate", session=self.session, expression=expression,
                               returnByValue=True)
    return result["result"].get("value")

  def wait_for_trial(self):
    """The id of the trial now shown (both clips playing), or None when all are done."""
    self.browser.call("Target.activateTarget", targetId=self.target)
    deadline = time.monotonic() + TRIAL_TIMEOUT_S
    while time.monotonic() < deadline:
      state = self.eval("document.body.dataset.state + '|' + (document.body.dataset.trial||'')"
                        " + '|' + document.getElementById('status').textContent")
      if state:
        phase, trial, status = state.split("|", 2)
        assert "error" not in status.lower() and "could not" not in status.lower(), status
        if phase == "done":
          return None
        if phase == "ready" and trial != self.last_trial:
          self.last_trial = trial
          self.html.append(self.eval("document.documentElement.outerHTML"))
          return trial
      time.sleep(0.05)
    raise AssertionError(f"{self.name}: no trial shown within {TRIAL_TIMEOUT_S} s")

  def click(self, button):
    """A real mouse click on one of the page's buttons."""
    rect = self.eval(f"JSON.stringify(document.getElementById('{button}')"
                     ".getBoundingClientRect())")
    rect = json.loads(rect)
    x, y = rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2
    for kind in ("mousePressed", "mouseReleased"):
      self.browser.call("Input.dispatchMouseEvent", session=self.session, type=kind, x=x, y=y,
                        button="left", clickCount=1)


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} absent; install with: apt-get install -y chromium")
def test_two_raters_vote_through_the_page_across_a_restart(eval_dir, tmp_path):
  study_dir = tmp_path / "study"
  port = free_port()
  proc, url = start_study(port, study_dir, f"--eval_dir={eval_dir}", f"--arms={ARM_A},{ARM_B}")
  key = json.loads((study_dir / "key.json").read_text())
  trials = key["trials"]
  pairs = [t for t in trials.values() if t["kind"] == "pair"]
  assert abs(sum(t["left_arm"] == ARM_A for t in pairs) * 2 - len(pairs)) <= 1   # balanced

  def choice(rater, trial_id):
    """alice prefers arm B and passes the checks; bob always says left."""
    t = trials[trial_id]
    if rater == "bob":
      return "left"
    return t.get("expected", "left" if t["left_arm"] == ARM_B else "right")

  votes_cast = {"alice": [], "bob": []}
  with headless_browser.DevTools(tmp_path / "profile", window=(1200, 900)) as browser:
    raters = [Rater(browser, "alice", url), Rater(browser, "bob", url)]

    def vote_n(rater, n):
      for _ in range(n):
        trial = rater.wait_for_trial()
        if trial is None:
          return
        pick = choice(rater.name, trial)
        rater.click(pick)
        votes_cast[rater.name].append((trial, pick))

    vote_n(raters[0], 4)
    vote_n(raters[1], 3)
    for rater in raters:       # the next trial is on screen, its token issued
      rater.wait_for_trial()
      rater.last_trial = None  # shown again after the restart: not a new one
    out = stop(proc)
    assert "7 vote(s)" in out
    proc, url = start_study(port, study_dir)       # no --eval_dir: serves the same study
    vote_n(raters[0], len(trials))
    vote_n(raters[1], len(trials))
    for rater in raters:
      assert rater.wait_for_trial() is None        # "All trials done"

    # What the raters' browsers received: the page, the API answers, the clips.
    bodies = []
    for event in browser.event_messages:
      if event["method"] != "Network.responseReceived":
        continue
      response = event["params"]["response"]
      if response["url"].startswith(url) and not response["mimeType"].startswith("video"):
        try:
          body = browser.call("Network.getResponseBody", session=event["sessionId"],
                              requestId=event["params"]["requestId"])
        except RuntimeError:
          continue   # evicted from the browser's buffer
        text = body["body"]
        bodies.append(base64.b64decode(text).decode() if body["base64Encoded"] else text)
    pages = [h for r in raters for h in r.html]
  stop(proc)
  assert any('"token"' in b for b in bodies) and any("<button" in b for b in bodies)
  for text in bodies + pages:
    for secret in SECRETS:
      assert secret not in text

  # Every vote cast is on disk once, none lost across the restart.
  log = [json.loads(line) for line in (study_dir / "votes.jsonl").read_text().splitlines()]
  for name in ("alice", "bob"):
    mine = [(v["trial"], v["choice"]) for v in log if v["rater"] == name]
    assert mine == votes_cast[name] and len(mine) == len(trials)
  b_sides = {"left" if trials[t]["left_arm"] == ARM_B else "right"
             for t, _ in votes_cast["alice"] if trials[t]["kind"] == "pair"}
  assert b_sides == {"left", "right"}             # arm B was shown on both sides

  result = subprocess.run([sys.executable, "-m", "videojam_jax.tally", f"--study_dir={study_dir}"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(study_dir / "tally" / "tally.csv") as f:
    overall = next(csv.DictReader(f))
  counted = sum(trials[t]["kind"] in ("pair", "repeat") for t, _ in votes_cast["alice"])
  assert overall["scope"] == "all prompts"
  assert int(overall["b_wins"]) == counted and int(overall["a_wins"]) == 0   # bob is flagged
  with open(study_dir / "tally" / "raters.csv") as f:
    flagged = {r["rater"]: r["flagged"] for r in csv.DictReader(f)}
  assert flagged == {"alice": "False", "bob": "True"}
