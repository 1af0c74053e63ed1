"""A study's votes turned into win rates, agreement and rater checks.

`tally(study, options)` joins votes.jsonl with key.json (which arm was on which side) and
computes, over the votes on pairs (first showings and repeats) of raters who are not
flagged:

- for arm A and arm B: wins, ties, and the win rate among decisive votes, with two
  intervals: Wilson's binomial interval (votes independent) and a bootstrap over pairs
  (votes on the same prompt and seed are resampled together, since they are not
  independent); the tie rate with its Wilson interval; and the share of decisive votes
  for the left side (a position-bias check: 0.5 expected);
- the same per motion kind, where the captions are the synthetic scenes' (`object_check`);
- agreement between raters on trials several of them voted on: mean pairwise agreement
  and Fleiss' kappa (categories A / B / tie), and each rater's self-consistency on the
  repeated pairs (sides swapped);
- per rater: votes, attention checks failed, median time per vote, flagged or not.

`write(study_dir, result)` writes tally.csv, raters.csv, tally.md, tally.png and index.html
into <study_dir>/tally/.
"""

from __future__ import annotations

import collections
import csv
import html
import io
import math
import os
import statistics   # the standard library's (NormalDist), not evaluation.statistics
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; must come before pyplot is imported
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from videojam_jax import files
from videojam_jax.evaluation import object_check
from videojam_jax.evaluation.study import trials as trials_lib
from videojam_jax.evaluation.study import votes as votes_lib

TALLY_DIR = "tally"
OVERALL = "all prompts"
TIE = "tie"


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
  """Wilson's score interval of a binomial proportion ((nan, nan) for n = 0)."""
  if n == 0:
    return float("nan"), float("nan")
  z = statistics.NormalDist().inv_cdf(0.5 + level / 2.0)
  p = successes / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return max(0.0, centre - half), min(1.0, centre + half)


def fleiss_kappa(counts: np.ndarray) -> float:
  """Fleiss' kappa of [items, categories] vote counts; items may have different numbers of
  raters (each needs >= 2). nan when there are no such items or all votes share a category."""
  counts = np.asarray(counts, np.float64)
  counts = counts[counts.sum(axis=1) >= 2]
  if counts.size == 0:
    return float("nan")
  n = counts.sum(axis=1)
  agreement = ((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean()
  p = counts.sum(axis=0) / n.sum()
  chance = float((p * p).sum())
  if chance >= 1.0:
    return float("nan")
  return float((agreement - chance) / (1.0 - chance))


def motion_kind(caption: str) -> str:
  """The motion kinds a synthetic-scene caption names ('linear', 'bouncing+falling', ...),
  or 'other' for captions of another grammar."""
  try:
    kinds = sorted({o.kind for o in object_check.parse_caption(caption)})
  except object_check.CaptionGrammarError:
    return "other"
  return "+".join(kinds)


def _outcome(vote: Mapping[str, Any], trial: Mapping[str, Any]) -> str:
  """The arm a vote on a pair chose, or 'tie'."""
  if vote["choice"] == TIE:
    return TIE
  return trial[f"{vote['choice']}_arm"]


def _cluster_bootstrap(wins_by_pair: Mapping[Any, tuple[int, int]], *, level: float,
                       num_resamples: int, seed: int = 0) -> tuple[float, float]:
  """Percentile interval of sum(wins) / sum(decisive) with pairs resampled as units."""
  cells = np.array(list(wins_by_pair.values()), np.float64).reshape(-1, 2)
  cells = cells[cells[:, 1] > 0]
  if len(cells) < 2:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, len(cells), size=(num_resamples, len(cells)))
  rates = cells[picks, 0].sum(axis=1) / cells[picks, 1].sum(axis=1)
  tail = 100.0 * (1.0 - level) / 2.0
  low, high = np.percentile(rates, [tail, 100.0 - tail])
  return float(low), float(high)


def _row(scope: str, votes: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
         arms: Sequence[str], level: float, num_resamples: int) -> dict[str, Any]:
  a, b = arms
  outcomes = [_outcome(v, t) for v, t in votes]
  wins_a, wins_b = outcomes.count(a), outcomes.count(b)
  ties = outcomes.count(TIE)
  decisive = wins_a + wins_b
  by_pair: dict[tuple[int, int], list[int]] = collections.defaultdict(lambda: [0, 0])
  for outcome, (_, trial) in zip(outcomes, votes):
    cell = by_pair[tuple(trial["pair"])]
    cell[0] += outcome == a
    cell[1] += outcome != TIE
  row = {"scope": scope, "arm_a": a, "arm_b": b, "votes": len(votes),
         "pairs": len(by_pair), "a_wins": wins_a, "b_wins": wins_b, "ties": ties}
  rate = wins_a / decisive if decisive else float("nan")
  row["a_win_rate"], row["b_win_rate"] = rate, 1.0 - rate
  row["a_win_ci_low"], row["a_win_ci_high"] = wilson_interval(wins_a, decisive, level)
  row["a_win_boot_low"], row["a_win_boot_high"] = _cluster_bootstrap(
      {k: tuple(v) for k, v in by_pair.items()}, level=level, num_resamples=num_resamples)
  row["tie_rate"] = ties / len(votes) if votes else float("nan")
  row["tie_ci_low"], row["tie_ci_high"] = wilson_interval(ties, len(votes), level)
  lefts = sum(v["choice"] == "left" for v, _ in votes)
  row["left_share"] = lefts / decisive if decisive else float("nan")
  return row


def _attention_failed(vote: Mapping[str, Any], trial: Mapping[str, Any]) -> bool:
  return vote["choice"] != trial["expected"]


def tally(study: trials_lib.Study, *, level: float = 0.95, num_resamples: int = 2000,
          max_attention_failure_rate: float = 0.25, exclude_flagged: bool = True
          ) -> dict[str, Any]:
  """Win rates, agreement and rater checks of a study's votes (see the module docstring)."""
  read = votes_lib.read(os.path.join(study.study_dir, votes_lib.VOTES_FILE))
  key_trials = study.key["trials"]
  arms = study.key["arms"]
  ours = [v["study"] == study.study_id and v["trial"] in key_trials for v in read.votes]
  votes = [v for v, mine in zip(read.votes, ours) if mine]
  foreign = len(ours) - len(votes)

  raters: dict[str, dict[str, Any]] = {}
  for vote in votes:
    r = raters.setdefault(vote["rater"], {"rater": vote["rater"], "votes": 0, "checks": 0,
                                          "checks_failed": 0, "times_ms": []})
    r["votes"] += 1
    r["times_ms"].append(vote["client_ms"])
    trial = key_trials[vote["trial"]]
    if trial["kind"] in trials_lib.ATTENTION_KINDS:
      r["checks"] += 1
      r["checks_failed"] += _attention_failed(vote, trial)
  for r in raters.values():
    r["failure_rate"] = r["checks_failed"] / r["checks"] if r["checks"] else float("nan")
    r["flagged"] = bool(r["checks"] and r["failure_rate"] > max_attention_failure_rate)
    r["median_s"] = float(np.median(r.pop("times_ms"))) / 1000.0

  counted = {name for name, r in raters.items() if not (exclude_flagged and r["flagged"])}
  pair_votes = [(v, key_trials[v["trial"]]) for v in votes
                if v["rater"] in counted and key_trials[v["trial"]]["kind"] in ("pair", "repeat")]
  rows = [_row(OVERALL, pair_votes, arms, level, num_resamples)]
  by_kind: dict[str, list] = collections.defaultdict(list)
  for vote, trial in pair_votes:
    by_kind[motion_kind(trial["prompt"])].append((vote, trial))
  if len(by_kind) > 1:
    rows += [_row(kind, by_kind[kind], arms, level, num_resamples) for kind in sorted(by_kind)]

  # Agreement between raters: first showings only (a repeat is the same question again).
  categories = [arms[0], arms[1], TIE]
  per_trial: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for vote, trial in pair_votes:
    if trial["kind"] == "pair":
      per_trial[vote["trial"]][_outcome(vote, trial)] += 1
  shared = {t: c for t, c in per_trial.items() if sum(c.values()) >= 2}
  counts = np.array([[c[k] for k in categories] for c in shared.values()]).reshape(-1, 3)
  pairwise = []
  for c in shared.values():
    n = sum(c.values())
    pairwise.append(sum(m * (m - 1) for m in c.values()) / (n * (n - 1)))
  outcome_of = {(v["rater"], v["trial"]): _outcome(v, t) for v, t in pair_votes}
  consistent = []
  for vote, trial in pair_votes:
    if trial["kind"] == "repeat":
      first = outcome_of.get((vote["rater"], trial["repeat_of"]))
      if first is not None:
        consistent.append(first == _outcome(vote, trial))
  agreement = {
      "trials_with_several_raters": len(shared),
      "pairwise_agreement": float(np.mean(pairwise)) if pairwise else float("nan"),
      "fleiss_kappa": fleiss_kappa(counts),
      "repeats_answered": len(consistent),
      "self_consistency": float(np.mean(consistent)) if consistent else float("nan")}
  return {"study_id": study.study_id, "arms": arms, "level": level, "rows": rows,
          "agreement": agreement, "raters": sorted(raters.values(), key=lambda r: r["rater"]),
          "counted_raters": sorted(counted), "exclude_flagged": exclude_flagged,
          "max_attention_failure_rate": max_attention_failure_rate,
          "unreadable_lines": read.bad_lines, "foreign_votes": foreign,
          "num_trials": len(key_trials)}


ROW_FIELDS = ("scope", "arm_a", "arm_b", "votes", "pairs", "a_wins", "b_wins", "ties",
              "a_win_rate", "a_win_ci_low", "a_win_ci_high", "a_win_boot_low", "a_win_boot_high",
              "b_win_rate", "tie_rate", "tie_ci_low", "tie_ci_high", "left_share")
RATER_FIELDS = ("rater", "votes", "checks", "checks_failed", "failure_rate", "median_s",
                "flagged")


def _csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
  buffer = io.StringIO(newline="")
  writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def _pct(x: float) -> str:
  return "n/a" if x != x else f"{100 * x:.0f}%"


def _interval(low: float, high: float) -> str:
  return "n/a" if low != low else f"[{100 * low:.0f}, {100 * high:.0f}]%"


def markdown(result: Mapping[str, Any]) -> str:
  """The tally as a markdown report: win rates, agreement, raters."""
  a, b = result["arms"]
  level = f"{100 * result['level']:g}%"
  lines = [f"# Study {result['study_id']}: {a} (A) vs {b} (B)", "",
           f"Win rate of A among decisive votes, {level} intervals: Wilson (votes independent) "
           "and bootstrap over pairs (votes on one prompt and seed resampled together). "
           "Ties are counted separately. Left share: decisive votes for the left side "
           "(0.5 = no position bias).", "",
           "| prompts | votes | pairs | A wins | B wins | ties | A win rate | Wilson | "
           "bootstrap | tie rate | left share |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in result["rows"]:
    lines.append(
        f"| {r['scope']} | {r['votes']} | {r['pairs']} | {r['a_wins']} | {r['b_wins']} | "
        f"{r['ties']} | {_pct(r['a_win_rate'])} | "
        f"{_interval(r['a_win_ci_low'], r['a_win_ci_high'])} | "
        f"{_interval(r['a_win_boot_low'], r['a_win_boot_high'])} | "
        f"{_pct(r['tie_rate'])} {_interval(r['tie_ci_low'], r['tie_ci_high'])} | "
        f"{_pct(r['left_share'])} |")
  g = result["agreement"]
  lines += ["", "## Agreement", "",
            f"- trials voted on by several raters: {g['trials_with_several_raters']}; mean "
            f"pairwise agreement {_pct(g['pairwise_agreement'])}; Fleiss' kappa "
            f"{g['fleiss_kappa']:.2f}" if g["fleiss_kappa"] == g["fleiss_kappa"] else
            f"- trials voted on by several raters: {g['trials_with_several_raters']}; "
            f"mean pairwise agreement {_pct(g['pairwise_agreement'])}; Fleiss' kappa n/a",
            f"- repeated pairs (sides swapped) answered: {g['repeats_answered']}; "
            f"same answer both times: {_pct(g['self_consistency'])}", "",
            "## Raters", "",
            f"Flagged: failed more than {_pct(result['max_attention_failure_rate'])} of their "
            "attention checks (same clip on both sides: expected \"can't tell\"; a clip beside "
            "its frame-shuffled copy: expected the intact one). Flagged raters' votes are "
            + ("left out of the win rates." if result["exclude_flagged"] else "counted."), "",
            "| rater | votes | checks | failed | median s/vote | flagged |",
            "|---|---|---|---|---|---|"]
  for r in result["raters"]:
    lines.append(f"| {r['rater']} | {r['votes']} | {r['checks']} | {r['checks_failed']} | "
                 f"{r['median_s']:.1f} | {'yes' if r['flagged'] else 'no'} |")
  if result["unreadable_lines"] or result["foreign_votes"]:
    lines += ["", f"Skipped: {len(result['unreadable_lines'])} unreadable line(s) of "
              f"votes.jsonl, {result['foreign_votes']} vote(s) for other studies or trials."]
  return "\n".join(lines) + "\n"


def plot(result: Mapping[str, Any], path: str) -> str:
  """A PNG: A's win rate per prompt group with its Wilson interval, and the 50% line."""
  rows = result["rows"]
  fig, ax = plt.subplots(figsize=(6.5, 0.5 + 0.45 * len(rows)))
  y = np.arange(len(rows))[::-1]
  rates = np.array([r["a_win_rate"] for r in rows], np.float64)
  low = np.array([r["a_win_ci_low"] for r in rows], np.float64)
  high = np.array([r["a_win_ci_high"] for r in rows], np.float64)
  ok = np.isfinite(rates)
  ax.errorbar(rates[ok], y[ok], xerr=[(rates - low)[ok], (high - rates)[ok]], fmt="o",
              capsize=3, color="tab:blue")
  ax.axvline(0.5, color="grey", lw=1, ls="--")
  ax.set_yticks(y, [f"{r['scope']} (n={r['a_wins'] + r['b_wins']})" for r in rows])
  ax.set_xlim(0, 1)
  a, b = result["arms"]
  ax.set_xlabel(f"share of decisive votes for {a}\n(vs {b}; {100 * result['level']:g}% Wilson)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def write(study_dir: str, result: Mapping[str, Any]) -> dict[str, str]:
  """Writes tally.csv, raters.csv, tally.md, tally.png and index.html under study_dir/tally/."""
  out = os.path.join(study_dir, TALLY_DIR)
  os.makedirs(out, exist_ok=True)
  paths = {name: os.path.join(out, name) for name in
           ("tally.csv", "raters.csv", "tally.md", "tally.png", "index.html")}
  files.atomic_write(paths["tally.csv"], _csv(result["rows"], ROW_FIELDS))
  files.atomic_write(paths["raters.csv"], _csv(result["raters"], RATER_FIELDS))
  text = markdown(result)
  files.atomic_write(paths["tally.md"], text)
  plot(result, paths["tally.png"])
  files.atomic_write(paths["index.html"], _html(result, text))
  return paths


def _html(result: Mapping[str, Any], text: str) -> str:
  """The tally page: the plot and the markdown tables as HTML tables."""
  body, table = [], []

  def flush_table():
    if table:
      head, *rest = table
      cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>"
                                       for c in row.strip("|").split("|"))
      body.append("<table><tr>" + cells(head, "th") + "</tr>"
                  + "".join("<tr>" + cells(r, "td") + "</tr>" for r in rest[1:]) + "</table>")
      table.clear()

  for line in text.splitlines():
    if line.startswith("|"):
      table.append(line)
      continue
    flush_table()
    if line.startswith("# "):
      body.append(f"<h1>{html.escape(line[2:])}</h1><img src=\"tally.png\" alt=\"win rates\">")
    elif line.startswith("## "):
      body.append(f"<h2>{html.escape(line[3:])}</h2>")
    elif line.startswith("- "):
      body.append(f"<li>{html.escape(line[2:])}</li>")
    elif line:
      body.append(f"<p>{html.escape(line)}</p>")
  flush_table()
  style = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
           "padding:.3em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
           "img{max-width:100%}")
  return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Tally "
          f"{html.escape(result['study_id'])}</title><style>{style}</style></head><body>"
          + "\n".join(body) + "</body></html>\n")
