r"""Compiles the real train step for a TPU slice on any machine, and says whether it fits.

  python -m videojam_jax.aot --config configs/dit_4b.py --topology v5p:4x4x4 \
      [--config.train.batch_size=64 ...] [--json_out report.json]

Prints per-chip memory (arguments, outputs, temporaries, total vs the chip's
HBM), XLA's FLOP count, analytic model FLOPs per token, and FITS / DOES NOT FIT
(videojam_jax/parallel/tpu_compile.py does the work).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from videojam_jax.parallel import sharding
from videojam_jax.parallel import tpu_compile


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so that importing
  this module beside another entry point defines no clashing --config flag)."""
  config_flags.DEFINE_config_file("config", None, "Config file to compile.", lock_config=True)
  flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p:4x4x4, v4:2x2x1, v6e:4x4.")
  flags.DEFINE_string("json_out", None, "Also write the report as JSON here.")
  flags.DEFINE_float("assumed_mfu", 0.4, "MFU for the expected step time.")
  flags.mark_flags_as_required(["config", "topology"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  topology = tpu_compile.parse_topology(args.topology)
  tpu_compile.configure_compile_only_host(topology)
  try:
    report = tpu_compile.build_report(args.config, topology, args.assumed_mfu)
  except sharding.MeshConfigError as e:   # the config cannot be laid out on this slice
    raise app.UsageError(str(e)) from e
  print(tpu_compile.format_report(report), flush=True)
  if args.json_out:
    os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    with open(args.json_out, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
