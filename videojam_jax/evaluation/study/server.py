"""The vote server of one study: serves the trial page and the clips, records votes.

Standard library only (http.server's ThreadingHTTPServer): a study has a handful of
raters, and nothing here needs more. Routes, under /s/<study_id>/:

  GET  /s/<id>/?rater=R     the trial page (without ?rater: a form asking for an id)
  GET  /s/<id>/next?rater=R R's next trial: media names, caption and a token, or done
  POST /s/<id>/vote         {"rater", "trial", "token", "choice", "client_ms"} (JSON)
  GET  /s/<id>/media/NAME   a clip (byte ranges supported: browsers seek with them)

A token is an HMAC of (study, rater, trial, time issued) under the study's secret, so
the server accepts votes only for trials it issued to that rater, across restarts and
without keeping sessions. Each rater sees every trial once, in an order of their own
(derived from the secret and the rater id, so it survives restarts). Errors are JSON
{"error": ...} with a 4xx status; a rejected request writes nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http
import http.server
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from absl import logging
import numpy as np

from videojam_jax.evaluation.study import trial_page
from videojam_jax.evaluation.study import trials as trials_lib
from videojam_jax.evaluation.study import votes as votes_lib

RATER_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MEDIA_PATTERN = re.compile(r"^[0-9a-f]+\.(mp4|gif)$")
MAX_CLIENT_MS = 24 * 3600 * 1000      # a day: anything longer is not a measured time
VOTE_FIELDS = {"rater": str, "trial": str, "token": str, "choice": str, "client_ms": (int, float)}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_TYPES = {".mp4": "video/mp4", ".gif": "image/gif"}
_READ_CHUNK = 1 << 16


class RequestError(Exception):
  """A request the server refuses: its HTTP status and a message for the client."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


class StudyService:
  """What the handler calls: trial order, tokens and votes of one study."""

  def __init__(self, study: trials_lib.Study, *, max_body_bytes: int):
    self.study = study
    self.max_body_bytes = int(max_body_bytes)
    self._secret = bytes.fromhex(study.key["secret"])
    self._trials = {t["id"]: t for t in study.public["trials"]}
    self.log = votes_lib.VoteLog(os.path.join(study.study_dir, votes_lib.VOTES_FILE))
    self.page = trial_page.render(study.public).encode()

  def _mac(self, *parts: str) -> str:
    message = "|".join(parts).encode()
    return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

  def order(self, rater: str) -> list[str]:
    """The rater's own order of every trial (the same after a restart)."""
    seed = int(self._mac("order", rater), 16)
    ids = self.study.trial_ids
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]

  def next_trial(self, rater: str) -> dict[str, Any]:
    """The first trial of the rater's order without a vote, with a fresh token."""
    check_rater(rater)
    done = self.log.votes_of(rater)
    order = self.order(rater)
    total = len(order)
    for position, trial_id in enumerate(order, start=1):
      if trial_id not in done:
        issued = str(int(time.time() * 1000))
        token = f"{issued}.{self._mac(self.study.study_id, rater, trial_id, issued)}"
        return {"done": False, "position": position, "total": total,
                "trial": self._trials[trial_id], "token": token}
    return {"done": True, "total": total}

  def record_vote(self, body: bytes) -> dict[str, Any]:
    """Checks a vote's body and appends it to the log; returns the recorded vote."""
    try:
      vote = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
      raise RequestError(400, f"the body is not JSON: {e}") from e
    if not isinstance(vote, dict):
      raise RequestError(400, "the body must be a JSON object")
    missing = [k for k in VOTE_FIELDS if k not in vote]
    unknown = sorted(set(vote) - set(VOTE_FIELDS))
    if missing or unknown:
      raise RequestError(400, f"a vote has exactly the fields {list(VOTE_FIELDS)}; missing "
                              f"{missing}, unknown {unknown}")
    for name, kind in VOTE_FIELDS.items():
      if not isinstance(vote[name], kind) or isinstance(vote[name], bool):
        raise RequestError(400, f"field {name!r} has the wrong type")
    check_rater(vote["rater"])
    if vote["choice"] not in trials_lib.CHOICES:
      raise RequestError(400, f"choice must be one of {list(trials_lib.CHOICES)}, got "
                              f"{vote['choice']!r}")
    if not 0 <= vote["client_ms"] <= MAX_CLIENT_MS:
      raise RequestError(400, f"client_ms={vote['client_ms']} is not a time in milliseconds")
    trial_id, rater = vote["trial"], vote["rater"]
    if trial_id not in self._trials:
      raise RequestError(404, f"no trial {trial_id!r} in study {self.study.study_id}")
    issued, _, mac = vote["token"].partition(".")
    if not (issued.isdigit() and hmac.compare_digest(
        mac, self._mac(self.study.study_id, rater, trial_id, issued))):
      raise RequestError(403, f"trial {trial_id} was not issued to rater {rater!r} by this study")
    now = time.time()
    record = {"study": self.study.study_id, "rater": rater, "trial": trial_id,
              "choice": vote["choice"], "client_ms": float(vote["client_ms"]),
              "server_s": round(now - int(issued) / 1000.0, 3),
              "time": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat()}
    if not self.log.append(record):
      raise RequestError(409, f"rater {rater!r} already voted on trial {trial_id}")
    return record


def check_rater(rater: str) -> None:
  if not isinstance(rater, str) or not RATER_PATTERN.match(rater):
    raise RequestError(400, f"rater id {rater!r}: use 1-64 letters, digits, '-' or '_'")


class _Handler(http.server.BaseHTTPRequestHandler):
  """Routes requests to the server's StudyService (self.server.service)."""

  server_version = "videojam-study"
  protocol_version = "HTTP/1.1"   # keep-alive: a trial loads several clips

  @property
  def service(self) -> StudyService:
    return self.server.service  # type: ignore[attr-defined]

  def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
    logging.debug("%s " + format, self.address_string(), *args)

  def _send(self, status: int, body: bytes, content_type: str,
            headers: Sequence[tuple[str, str]] = ()) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    for name, value in headers:
      self.send_header(name, value)
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _json(self, status: int, value: Any) -> None:
    self._send(status, json.dumps(value).encode(), "application/json")

  def _route(self) -> tuple[str, dict[str, list[str]]]:
    """The path inside this study ('' for its page) and the query; 404 for anything else."""
    url = urllib.parse.urlsplit(self.path)
    query = urllib.parse.parse_qs(url.query)
    parts = url.path.split("/")
    study_id = self.service.study.study_id
    if url.path == "/":
      raise _Redirect(f"/s/{study_id}/")
    if len(parts) < 3 or parts[0] != "" or parts[1] != "s":
      raise RequestError(404, f"no such page: {url.path} (the study is at /s/{study_id}/)")
    if parts[2] != study_id:
      raise RequestError(404, f"no study {parts[2]!r} on this server (it serves {study_id})")
    if len(parts) == 3:
      raise _Redirect(f"/s/{study_id}/" + (f"?{url.query}" if url.query else ""))
    return "/".join(parts[3:]), query

  def _handle(self, method: str) -> None:
    try:
      try:
        path, query = self._route()
        if method == "GET":
          self._get(path, query)
        else:
          self._post(path)
      except _Redirect as redirect:
        self._send(302, b"", "text/plain", [("Location", redirect.location)])
    except RequestError as e:
      if e.status == 413:
        self.close_connection = True   # the unread body must not be taken for a request
      logging.info("%s %s -> %d %s", method, self.path[:200], e.status, e)
      self._json(e.status, {"error": str(e)})

  def do_GET(self) -> None:  # pylint: disable=invalid-name
    self._handle("GET")

  def do_HEAD(self) -> None:  # pylint: disable=invalid-name
    self._handle("GET")

  def do_POST(self) -> None:  # pylint: disable=invalid-name
    self._handle("POST")

  def _not_allowed(self, allowed: str) -> RequestError:
    return RequestError(405, f"{self.command} {self.path}: only {allowed} is allowed here")

  def _get(self, path: str, query: dict[str, list[str]]) -> None:
    if path == "":
      self._send(200, self.service.page, "text/html; charset=utf-8")
    elif path == "next":
      rater = query.get("rater", [""])[0]
      self._json(200, self.service.next_trial(rater))
    elif path.startswith("media/"):
      self._media(path[len("media/"):])
    elif path == "vote":
      raise self._not_allowed("POST")
    else:
      raise RequestError(404, f"no such page in this study: {path!r}")

  def _post(self, path: str) -> None:
    if path != "vote":
      raise self._not_allowed("GET")
    length = self.headers.get("Content-Length")
    if length is None or not length.isdigit():
      raise RequestError(411, "a vote needs a Content-Length header")
    if int(length) > self.service.max_body_bytes:
      raise RequestError(413, f"a vote is at most {self.service.max_body_bytes} bytes, this "
                              f"request has {length}")
    body = self.rfile.read(int(length))
    record = self.service.record_vote(body)
    logging.info("vote %d: rater %s, trial %s", self.service.log.count, record["rater"],
                 record["trial"])
    self._json(200, {"recorded": True, "trial": record["trial"]})

  def _media(self, name: str) -> None:
    """A clip from the study's media folder; one byte range if asked (RFC 7233). Written
    here because http.server's SimpleHTTPRequestHandler serves no ranges."""
    if not MEDIA_PATTERN.match(name):
      raise RequestError(404, f"no media {name!r}")
    path = self.service.study.media_path(name)
    if not os.path.isfile(path):
      raise RequestError(404, f"no media {name!r}")
    size = os.path.getsize(path)
    start, end, status, headers = 0, size - 1, 200, [("Accept-Ranges", "bytes")]
    match = _RANGE.match(self.headers.get("Range", ""))
    if match and (match[1] or match[2]):
      if match[1]:
        start, end = int(match[1]), min(int(match[2]) if match[2] else size - 1, size - 1)
      else:   # the last N bytes
        start = max(0, size - int(match[2]))
      if start > end or start >= size:
        self._send(416, b"", "text/plain", [("Content-Range", f"bytes */{size}")])
        return
      status = 206
      headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
    with open(path, "rb") as f:
      f.seek(start)
      body = f.read(end - start + 1)
    content_type = _CONTENT_TYPES[os.path.splitext(name)[1]]
    self._send(status, body, content_type, headers)


class _Redirect(Exception):
  def __init__(self, location: str):
    super().__init__(location)
    self.location = location


class StudyServer(http.server.ThreadingHTTPServer):
  """A ThreadingHTTPServer bound to one study (`serve_forever` in the caller's thread)."""

  daemon_threads = True

  def __init__(self, study: trials_lib.Study, host: str, port: int, *, max_body_bytes: int):
    self.service = StudyService(study, max_body_bytes=max_body_bytes)
    super().__init__((host, int(port)), _Handler)

  @property
  def base_url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}/s/{self.service.study.study_id}/"

  def rater_url(self, rater: str) -> str:
    check_rater(rater)
    return f"{self.base_url}?rater={urllib.parse.quote(rater)}"


def serve_in_thread(server: StudyServer) -> threading.Thread:
  """Starts `server.serve_forever` in a daemon thread (tests; stop with server.shutdown())."""
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  return thread
