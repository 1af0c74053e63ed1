r"""A blind side-by-side study of two evaluated arms: build it, then serve it to raters.

  python -m videojam_jax.study --eval_dir workdirs/eval_quickstart \
      --arms baseline,videojam/inner_w1-5_w2-3_n25_euler_shift1_until1 \
      --study_dir workdirs/study_quickstart [--config configs/study.py --config.server.port=8000]

Prints one link per rater (config.raters); anyone else on the network can join at the
study's address with an id of their own. Ctrl-C stops the server; running the command
again (with or without --eval_dir/--arms) serves the same study, and raters continue
where they stopped. Tally the votes with `python -m videojam_jax.tally`.
"""

import os
import signal

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from videojam_jax.evaluation.study import server as server_lib
from videojam_jax.evaluation.study import trials

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "study.py")
_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Study config file.",
                                          lock_config=True)
_EVAL_DIR = flags.DEFINE_string("eval_dir", None, "An `evaluate` --workdir holding both arms.")
_ARMS = flags.DEFINE_list("arms", None, "A,B: two results of eval_dir (model or model/setting).")
_STUDY_DIR = flags.DEFINE_string("study_dir", None, "Where the study and its votes live.")
_BUILD_ONLY = flags.DEFINE_bool("build_only", False, "Build the study, do not serve it.")
flags.mark_flags_as_required(["study_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  try:
    if _EVAL_DIR.value or _ARMS.value:
      if not (_EVAL_DIR.value and _ARMS.value):
        raise app.UsageError("--eval_dir and --arms go together")
      study = trials.build(config, _EVAL_DIR.value, _ARMS.value, _STUDY_DIR.value)
    else:
      study = trials.load(_STUDY_DIR.value)
  except trials.StudyError as e:
    raise app.UsageError(str(e)) from e
  counts = {}
  for trial in study.key["trials"].values():
    counts[trial["kind"]] = counts.get(trial["kind"], 0) + 1
  print(f"study {study.study_id} in {study.study_dir}: {len(study.trial_ids)} trials {counts}",
        flush=True)
  if _BUILD_ONLY.value:
    return
  try:
    server = server_lib.StudyServer(study, config.server.host, config.server.port,
                                    max_body_bytes=config.server.max_body_bytes)
  except OSError as e:
    raise app.UsageError(f"cannot listen on {config.server.host}:{config.server.port} ({e}); "
                         "choose another --config.server.port") from e
  if server.service.log.count:
    print(f"{server.service.log.count} vote(s) already recorded", flush=True)
  for rater in config.raters:
    print(f"  rater {rater}: {server.rater_url(rater)}", flush=True)
  print(f"serving study {study.study_id} at {server.base_url} (Ctrl-C stops)", flush=True)
  def _stop(signum, frame):   # SIGTERM (and SIGINT where a shell ignores it) stop cleanly
    del signum, frame
    raise KeyboardInterrupt
  signal.signal(signal.SIGTERM, _stop)
  signal.signal(signal.SIGINT, _stop)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    logging.info("stopped")
  finally:
    server.server_close()
  print(f"stopped; {server.service.log.count} vote(s) in "
        f"{server.service.log.path}", flush=True)


if __name__ == "__main__":
  app.run(main)
