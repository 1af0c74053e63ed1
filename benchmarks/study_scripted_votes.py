r"""Scripted raters for the tally page shown in docs/ (NOT human judgements).

  python benchmarks/study_scripted_votes.py workdirs/study http://127.0.0.1:8000/s/<study id>/

Votes through the running server's own API: rater1 and rater2 choose at random (seeded;
left 40 %, right 40 %, can't tell 20 %) and pass every attention check (they read
key.json); rater3 always answers "left", so the tally flags it.
"""
import json, sys, urllib.request
import numpy as np
study_dir, base = sys.argv[1:]
key = json.load(open(f"{study_dir}/key.json"))
def post(body):
  req = urllib.request.Request(base + "vote", json.dumps(body).encode(), {"Content-Type": "application/json"})
  return urllib.request.urlopen(req).status
for n, rater in enumerate(["rater1", "rater2", "rater3"]):
  rng = np.random.default_rng(n)
  while True:
    nxt = json.load(urllib.request.urlopen(base + f"next?rater={rater}"))
    if nxt["done"]:
      break
    t = key["trials"][nxt["trial"]["id"]]
    choice = "left" if rater == "rater3" else t.get("expected") or ["left", "right", "tie"][rng.choice(3, p=[.4, .4, .2])]
    post({"rater": rater, "trial": nxt["trial"]["id"], "token": nxt["token"], "choice": choice, "client_ms": float(rng.integers(3000, 9000))})
print("done")
