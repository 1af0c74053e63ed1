r"""Exports a trained Wan run's transformer in diffusers format (WanTransformer3DModel).

  python -m videojam_jax.export --workdir workdirs/RUN --out exported/transformer \
      [--weights=ema|params] [--dtype=bfloat16] [--step=N]

The folder loads in PyTorch with
`diffusers.WanTransformer3DModel.from_pretrained("exported/transformer")`.
"""

from absl import app
from absl import flags

from videojam_jax.training import export

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run to export.")
_OUT = flags.DEFINE_string("out", None, "The diffusers model folder to write.")
_WEIGHTS = flags.DEFINE_enum("weights", "ema", ["ema", "params"], "Which weights.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "The dtype of the written tensors.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  files = export.export_run(_WORKDIR.value, _OUT.value, which=_WEIGHTS.value,
                            dtype=_DTYPE.value, step=_STEP.value)
  print(f"wrote {len(files)} files to {_OUT.value}: {', '.join(files)}")


if __name__ == "__main__":
  app.run(main)
