"""The vote server: votes recorded durably; bad input gets a clear 4xx and writes nothing."""

import json
import urllib.error
import urllib.request

import pytest

from configs import study as study_config
from tests.evaluation.study.conftest import ARM_A, ARM_B
from videojam_jax.evaluation.study import server as server_lib
from videojam_jax.evaluation.study import tally as tally_lib
from videojam_jax.evaluation.study import trials
from videojam_jax.evaluation.study import votes as votes_lib


@pytest.fixture
def study(eval_dir, tmp_path):
  return trials.build(study_config.get_config(), eval_dir, [ARM_A, ARM_B], tmp_path / "s")


@pytest.fixture
def serve(study):
  running = []

  def start():
    server = server_lib.StudyServer(study, "127.0.0.1", 0, max_body_bytes=4096)
    server_lib.serve_in_thread(server)
    running.append(server)
    return server

  yield start
  for server in running:
    server.shutdown()
    server.server_close()


def request(url, body=None, headers=None, method=None):
  data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
  req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
  try:
    with urllib.request.urlopen(req, timeout=10) as response:
      return response.status, response.read()
  except urllib.error.HTTPError as e:
    return e.code, e.read()


def issue(server, rater):
  status, body = request(server.base_url + f"next?rater={rater}")
  assert status == 200
  return json.loads(body)


def test_votes_survive_restarts_and_bad_input_writes_nothing(study, serve):
  server = serve()
  base = server.base_url
  first = issue(server, "alice")
  vote = {"rater": "alice", "trial": first["trial"]["id"], "token": first["token"],
          "choice": "left", "client_ms": 1234}
  assert request(base + "vote", vote)[0] == 200
  log_path = server.service.log.path
  recorded = open(log_path, "rb").read()

  second = issue(server, "alice")
  assert second["position"] == 2 and second["trial"]["id"] != first["trial"]["id"]
  other = issue(server, "bob")["trial"]["id"]
  bad = [
      (dict(vote, trial="tforged00000"), 404, "no trial"),                        # forged id
      (dict(vote, trial=second["trial"]["id"]), 403, "not issued"),              # old token
      (dict(vote, rater="bob", trial=other, token=first["token"]), 403, "not issued"),
      (dict(vote, choice="up"), 400, "choice"),
      (dict(vote, client_ms=-5), 400, "client_ms"),
      (dict(vote, rater="no spaces"), 400, "rater id"),
      ({k: v for k, v in vote.items() if k != "token"}, 400, "missing ['token']"),
      (dict(vote, extra=1), 400, "unknown ['extra']"),
      (dict(vote, client_ms=True), 400, "wrong type"),
      (b"{not json", 400, "not JSON"),
      (b"[1, 2]", 400, "JSON object"),
      (vote, 409, "already voted"),                                                # replay
  ]
  for body, status, message in bad:
    got, text = request(base + "vote", body)
    assert got == status and message in json.loads(text)["error"], (body, got, text)
  root = base.rsplit("/s/", 1)[0]
  for url, status in ((root + "/s/sdeadbeef00/vote", 404), (root + "/s/sdeadbeef00/", 404),
                      (base + "media/../key.json", 404), (base + "key.json", 404),
                      (base + "media/" + "0" * 24 + ".mp4", 404)):
    assert request(url, vote if url.endswith("vote") else None)[0] == status, url
  assert request(base + "vote")[0] == 405
  big = json.dumps(dict(vote, token="x" * 5000)).encode()
  assert request(base + "vote", big)[0] == 413
  assert request(base + "next?rater=a%20b")[0] == 400
  assert open(log_path, "rb").read() == recorded        # nothing was written by any of them

  # A restart: the recorded vote is kept, alice continues at her second trial.
  server.shutdown()
  server.server_close()
  server = serve()
  assert server.service.log.count == 1
  again = issue(server, "alice")
  assert again["position"] == 2 and again["trial"]["id"] == second["trial"]["id"]
  # A token issued before the restart is still accepted (tokens are HMACs, not sessions).
  assert request(server.base_url + "vote", dict(vote, trial=second["trial"]["id"],
                                                token=second["token"]))[0] == 200


def test_media_serves_byte_ranges(study, serve):
  server = serve()
  name = study.public["trials"][0]["left"]["video"]
  data = open(study.media_path(name), "rb").read()
  status, body = request(server.base_url + "media/" + name, headers={"Range": "bytes=10-19"})
  assert status == 206 and body == data[10:20]
  status, body = request(server.base_url + "media/" + name)
  assert status == 200 and body == data
  assert request(server.base_url + "media/" + name,
                 headers={"Range": f"bytes={len(data) + 5}-"})[0] == 416


def test_a_torn_last_line_is_kept_skipped_and_followed(study, serve):
  server = serve()
  t = issue(server, "alice")
  assert request(server.base_url + "vote", {"rater": "alice", "trial": t["trial"]["id"],
                                            "token": t["token"], "choice": "tie",
                                            "client_ms": 10})[0] == 200
  server.shutdown()
  server.server_close()
  with open(server.service.log.path, "ab") as f:
    f.write(b'{"study": "s1", "rater": "ali')        # a crash mid-write
  server = serve()
  t = issue(server, "alice")
  assert t["position"] == 2
  assert request(server.base_url + "vote", {"rater": "alice", "trial": t["trial"]["id"],
                                            "token": t["token"], "choice": "left",
                                            "client_ms": 10})[0] == 200
  read = votes_lib.read(server.service.log.path)
  assert len(read.votes) == 2 and read.bad_lines == [2]
  assert b'"rater": "ali\n' in open(server.service.log.path, "rb").read()   # kept as it was
  result = tally_lib.tally(study)
  assert result["unreadable_lines"] == [2] and result["raters"][0]["votes"] == 2
