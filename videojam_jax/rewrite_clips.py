r"""Draws an evaluation's clips again from its clips.npz (e.g. GIF -> MP4), rebuilds its page.

  python -m videojam_jax.rewrite_clips --eval_dir workdirs/protocol_gpu/eval \
      [--video_format=mp4 --min_side=128 --fps=8 --flow_sigma=0.15]

For an evaluation made on a machine without imageio-ffmpeg (its clips written as
GIF, or not copied back): videojam_jax/evaluation/rewrite_clips.py. --fps and
--flow_sigma are needed only for evaluations whose settings.json predates them.
"""

from absl import app
from absl import flags

from videojam_jax.evaluation import rewrite_clips

_EVAL_DIR = flags.DEFINE_string("eval_dir", None,
                                "The evaluation's folder (eval_config.json, runs/).")
_FORMAT = flags.DEFINE_enum("video_format", "mp4", ["mp4", "gif"], "The format to write.")
_MIN_SIDE = flags.DEFINE_integer("min_side", 0,
                                 "Upscale to this shorter side; 0 = the evaluation's.")
_FPS = flags.DEFINE_float("fps", 0.0, "Frame rate, if settings.json lacks it.")
_SIGMA = flags.DEFINE_float("flow_sigma", 0.0,
                            "The motion encoding's sigma, if settings.json lacks it.")
flags.mark_flags_as_required(["eval_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    page = rewrite_clips.rewrite(_EVAL_DIR.value, _FORMAT.value, min_side=_MIN_SIDE.value or None,
                                 fps=_FPS.value or None, flow_sigma=_SIGMA.value or None)
  except rewrite_clips.RewriteError as e:
    raise app.UsageError(str(e)) from e
  print(f"wrote {page}")


if __name__ == "__main__":
  app.run(main)
