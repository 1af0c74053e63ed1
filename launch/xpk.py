r"""Submits the training command to a GKE cluster of TPU slices with xpk.

  python -m launch.xpk --cluster=my-cluster --workload=dit4b-run1 --tpu_type=v5p-32 \
      --base_docker_image=us-docker.pkg.dev/my-project/images/videojam-base:latest \
      --config=configs/dit_4b.py --workdir=gs://my-bucket/runs/dit4b \
      [--num_slices=1] [--project=...] [--zone=...] [--env=KEY=value ...] \
      [--config.train.batch_size=64 ...] [--dry_run]

Every TPU host of the workload runs `python3 -m videojam_jax.train ...` with
VIDEOJAM_DISTRIBUTED=1 (JAX finds its peers from the environment GKE sets).
`--base_docker_image` (a local image holding Python, requirements.txt and
jax[tpu]) has xpk build an image from it plus this repository, copied to /app
(xpk is run from the repository root); `--docker_image` runs a prebuilt image
that already holds the repository (at --repo_dir).

The workdir and dataset must be paths every pod can read and write. gs:// paths
are passed to the trainer unchanged (it reads and writes them natively): the
image needs requirements.txt installed and the pods need GCS credentials (e.g.
Workload Identity). A bucket mounted in the pods by the Cloud Storage FUSE CSI
driver works too: pass the mount path. See docs/launch.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from launch import commands


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, tuple[str, ...]]:
  """Launcher flags, and the --config.key=value overrides passed through to training."""
  parser = argparse.ArgumentParser(prog="python -m launch.xpk", description=__doc__.splitlines()[0])
  parser.add_argument("--cluster", required=True)
  parser.add_argument("--workload", required=True, help="Workload name (unique in the cluster).")
  parser.add_argument("--tpu_type", required=True, help="e.g. v5p-32, v6e-256.")
  parser.add_argument("--num_slices", type=int, default=1)
  parser.add_argument("--project", default=None)
  parser.add_argument("--zone", default=None)
  image = parser.add_mutually_exclusive_group(required=True)
  image.add_argument("--docker_image", default=None, help="Prebuilt image with the repository.")
  image.add_argument("--base_docker_image", default=None,
                     help="Local base image (Python, requirements, jax[tpu]); xpk adds the repo.")
  parser.add_argument("--repo_dir", default="/app",
                      help="Where the repository is inside the image (xpk's build puts it in /app).")
  parser.add_argument("--config", required=True, help="Config file, relative to the repo root.")
  parser.add_argument("--workdir", required=True,
                      help="gs://BUCKET/path (passed to training as is), or a path mounted "
                      "in every pod (e.g. by the Cloud Storage FUSE CSI driver).")
  parser.add_argument("--env", action="append", default=[], help="KEY=value for every host.")
  parser.add_argument("--python", default="python3")
  parser.add_argument("--dry_run", action="store_true", help="Print the command, run nothing.")
  args, overrides = commands.split_overrides(list(argv))
  return parser.parse_args(args), overrides


def plan(args: argparse.Namespace, overrides: tuple[str, ...]) -> list[list[str]]:
  """The xpk command(s) to run."""
  job = commands.TrainJob(args.config, args.workdir, overrides, commands.parse_env(args.env),
                          args.python)
  script = commands.host_script(job, args.repo_dir)
  return [commands.xpk_workload_create(
      cluster=args.cluster, workload=args.workload, tpu_type=args.tpu_type,
      num_slices=args.num_slices, command=script, project=args.project, zone=args.zone,
      docker_image=args.docker_image, base_docker_image=args.base_docker_image)]


def main(argv: Sequence[str] | None = None) -> None:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    _launch(args, overrides)
  except commands.LaunchError as e:
    sys.exit(f"error: {e}")


def _launch(args: argparse.Namespace, overrides: tuple[str, ...]) -> None:
  commands.execute(plan(args, overrides), dry_run=args.dry_run)


if __name__ == "__main__":
  main()
