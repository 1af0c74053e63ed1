"""Blind pairwise studies of generated clips, for raters who are not ML specialists.

  trials      build a study from an `evaluate` workdir: pairs, sides, repeats, checks
  trial_page  the page raters see (two clips, one question, three buttons)
  votes       the append-only vote log (votes.jsonl)
  server      the local web server that serves the page and records votes
  tally       win rates with intervals, agreement, rater checks; CSV, markdown, plot, page

Entry points: `python -m videojam_jax.study` (build and serve) and
`python -m videojam_jax.tally`; configs/study.py documents the options.
"""
