r"""The votes of a blind study as win rates with intervals, agreement and rater checks.

  python -m videojam_jax.tally --study_dir workdirs/study_quickstart \
      [--config configs/study.py --config.tally.exclude_flagged=False]

Writes <study_dir>/tally/: tally.csv, raters.csv, tally.md, tally.png and index.html
(videojam_jax/evaluation/study/tally.py). It can run while the study is being served.
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from videojam_jax.evaluation.study import tally
from videojam_jax.evaluation.study import trials

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "study.py")
_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG,
                                          "Study config file (its `tally` block).",
                                          lock_config=True)
_STUDY_DIR = flags.DEFINE_string("study_dir", None, "The study's folder.")
flags.mark_flags_as_required(["study_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  options = _CONFIG.value.tally
  try:
    study = trials.load(_STUDY_DIR.value)
  except trials.StudyError as e:
    raise app.UsageError(str(e)) from e
  result = tally.tally(study, level=options.level, num_resamples=options.num_resamples,
                       max_attention_failure_rate=options.max_attention_failure_rate,
                       exclude_flagged=options.exclude_flagged)
  paths = tally.write(study.study_dir, result)
  print(tally.markdown(result))
  print(f"wrote {', '.join(paths.values())}")


if __name__ == "__main__":
  app.run(main)
