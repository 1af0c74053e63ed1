r"""A blind side-by-side study of two evaluated arms, and its tally.

  python -m videojam_jax.evaluate --config configs/eval_quickstart.py --workdir workdirs/eval_quickstart
  python -m videojam_jax.study --eval_dir workdirs/eval_quickstart --arms baseline,videojam/inner_w1-5_w2-3_n25_euler_shift1_until1 \
      --study_dir workdirs/study_quickstart
  python -m videojam_jax.tally --study_dir workdirs/study_quickstart

An arm is a result of `evaluate` (`runs/<model>/<setting>`), or a model's name when it has
exactly one setting there. The study command prints one link per rater; anyone on the
network can also join from the study's address with a name of their own. Votes are
appended to <study_dir>/votes.jsonl; stopping and restarting the command loses nothing,
and raters continue where they were. The fields under `server` and `tally` can be changed
between runs; the others define the study (changing them needs a new --study_dir).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # --- What each trial asks and shows.
  config.title = "A short video study"
  config.question = "Which clip moves more naturally?"
  config.instructions = ("Both clips play together and loop. Watch them, then pick the one "
                         "whose motion looks more natural, or \"Can't tell\".")
  # Button labels; the recorded choice is always one of left | right | tie.
  config.choices = ml_collections.ConfigDict(dict(left="Left", right="Right", tie="Can't tell"))
  config.show_captions = True     # the prompt above the clips
  config.show_motion = False      # each arm's motion panel under its clip (both arms need one)

  # --- Which trials. Pairs: every (prompt, seed) both arms sampled, A beside B.
  config.max_pairs = 0            # > 0: a random subset of that many pairs
  config.repeat_fraction = 0.1    # of pairs shown a second time, sides swapped (consistency)
  # Attention checks, a fraction of the number of pairs: "same" shows one clip on both
  # sides (expected: tie), "shuffled" a clip beside a frame-shuffled copy of itself
  # (expected: the intact side). Kinds take turns.
  config.attention = ml_collections.ConfigDict(dict(fraction=0.1, kinds=("same", "shuffled")))
  config.seed = 0                 # side order, subsets, trial ids, shuffled frames

  # --- The vote server (may change between runs).
  config.raters = ("rater1", "rater2")   # links printed at start; other ids may join too
  config.server = ml_collections.ConfigDict(dict(
      host="127.0.0.1",           # 0.0.0.0: reachable from other machines on the network
      port=8000,                  # 0: any free port
      max_body_bytes=4096))       # a vote is ~200 bytes; larger requests get 413

  # --- The tally (may change between runs).
  config.tally = ml_collections.ConfigDict(dict(
      level=0.95,                 # confidence level of every interval
      num_resamples=2000,         # bootstrap over pairs
      max_attention_failure_rate=0.25,   # raters failing more of their checks are flagged
      exclude_flagged=True))      # leave flagged raters' votes out of the win rates
  return config
