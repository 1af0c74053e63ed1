r"""Runs the training command on every host of a Cloud TPU VM slice (gcloud).

  python -m launch.tpu_vm --tpu_name=my-v5p --zone=us-east5-a --project=my-project \
      --config=configs/dit_4b.py --workdir=gs://my-bucket/runs/dit4b \
      [--create --accelerator_type=v5p-32 --runtime_version=v2-alpha-tpuv5] \
      [--sync_code] [--install] [--detach] [--env=KEY=value ...] \
      [--mount_gcs_with_gcsfuse [--mount_root=/tmp/gcs]] \
      [--config.train.batch_size=64 ...] [--dry_run]

Steps, each one printed before it runs (`--dry_run` prints them and runs none):
  --create       request the slice as a queued resource and wait until ACTIVE
  --sync_code    `git archive HEAD` here, copy it to every host, unpack it
  --install      pip install requirements.txt and jax[tpu] on every host
  always         on every host (--worker=all): export VIDEOJAM_DISTRIBUTED=1,
                 run `python3 -m videojam_jax.train ...`

gs:// paths in the workdir and the overrides reach the trainer unchanged: it
reads and writes them natively (etils.epath with gcsfs, Orbax/tensorstore,
TFDS, ArrayRecord; requirements.txt has what they need). Opt-in
`--mount_gcs_with_gcsfuse` instead mounts each bucket named there with gcsfuse
at MOUNT_ROOT/BUCKET on every host and rewrites the paths to it, for images
where native gs:// access is not set up (gcsfuse must be installed then).
See docs/launch.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from launch import commands

WAIT_POLL_SECONDS = 30


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, tuple[str, ...]]:
  """Launcher flags, and the --config.key=value overrides passed through to training."""
  parser = argparse.ArgumentParser(prog="python -m launch.tpu_vm",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--tpu_name", required=True, help="TPU VM (the queued resource's node id).")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default=None, help="Default: gcloud's configured project.")
  parser.add_argument("--config", required=True, help="Config file, relative to the repo root.")
  parser.add_argument("--workdir", required=True,
                      help="gs://BUCKET/path (passed to training as is), or a path that "
                      "every host sees.")
  parser.add_argument("--env", action="append", default=[], help="KEY=value for every host.")
  parser.add_argument("--repo_dir", default="videojam_jax",
                      help="Repository on each host, relative to the ssh user's home.")
  parser.add_argument("--mount_gcs_with_gcsfuse", action="store_true",
                      help="Mount the gs:// buckets named in the workdir and the overrides "
                      "with gcsfuse on every host and pass the mount paths to training, "
                      "instead of the gs:// paths (for images without native gs:// access).")
  parser.add_argument("--mount_root", default=None,
                      help="Where gcsfuse mounts the buckets on each host (with "
                      f"--mount_gcs_with_gcsfuse; default {commands.DEFAULT_MOUNT_ROOT}).")
  parser.add_argument("--python", default="python3")
  parser.add_argument("--create", action="store_true", help="Create the slice (queued resource).")
  parser.add_argument("--queued_resource", default=None, help="Default: --tpu_name.")
  parser.add_argument("--accelerator_type", default=None, help="e.g. v5p-32 (with --create).")
  parser.add_argument("--runtime_version", default=None, help="e.g. v2-alpha-tpuv5 (with --create).")
  parser.add_argument("--spot", action="store_true", help="Spot capacity (with --create).")
  parser.add_argument("--sync_code", action="store_true", help="Copy this repo's HEAD to every host.")
  parser.add_argument("--install", action="store_true", help="pip install the requirements.")
  parser.add_argument("--detach", action="store_true",
                      help="Train in the background on each host (log: REPO_DIR/train.log).")
  parser.add_argument("--dry_run", action="store_true", help="Print the commands, run nothing.")
  args, overrides = commands.split_overrides(list(argv))
  parsed = parser.parse_args(args)
  if parsed.create and not (parsed.accelerator_type and parsed.runtime_version):
    parser.error("--create needs --accelerator_type and --runtime_version")
  if parsed.mount_root is not None and not parsed.mount_gcs_with_gcsfuse:
    parser.error(f"--mount_root={parsed.mount_root} only applies with --mount_gcs_with_gcsfuse")
  return parsed, overrides


def plan(args: argparse.Namespace, overrides: tuple[str, ...],
         archive_path: str) -> list[tuple[str, list[str]]]:
  """[(kind, argv)]: kind 'run' (run once) or 'wait' (repeat until it prints ACTIVE)."""
  loc = dict(zone=args.zone, project=args.project)
  steps: list[tuple[str, list[str]]] = []
  if args.create:
    name = args.queued_resource or args.tpu_name
    steps.append(("run", commands.queued_resource_create(
        name, node_id=args.tpu_name, accelerator_type=args.accelerator_type,
        runtime_version=args.runtime_version, spot=args.spot, **loc)))
    steps.append(("wait", commands.queued_resource_state(name, **loc)))
  repo = shlex.quote(args.repo_dir)
  if args.sync_code:
    remote_archive = commands.SOURCE_ARCHIVE
    steps.append(("run", commands.source_archive(archive_path)))
    steps.append(("run", commands.tpu_vm_scp(archive_path, remote_archive, args.tpu_name, **loc)))
    steps.append(("run", commands.tpu_vm_ssh(
        args.tpu_name, f"mkdir -p {repo} && tar -xzf {remote_archive} -C {repo}", **loc)))
  if args.install:
    steps.append(("run", commands.tpu_vm_ssh(
        args.tpu_name, f"cd {repo} && {shlex.quote(args.python)} -m pip install -q "
        "-r requirements.txt 'jax[tpu]'", **loc)))

  job = commands.TrainJob(args.config, args.workdir, overrides, commands.parse_env(args.env),
                          args.python)
  setup: list[str] = []
  if args.mount_gcs_with_gcsfuse:
    mount_root = args.mount_root or commands.DEFAULT_MOUNT_ROOT
    setup = commands.gcsfuse_mount_lines(commands.gcs_buckets(job), mount_root)
    job = commands.mount_gcs_paths(job, mount_root)
  script = commands.host_script(job, args.repo_dir, setup=setup,
                                log_file="train.log" if args.detach else None)
  steps.append(("run", commands.tpu_vm_ssh(args.tpu_name, script, **loc)))
  return steps


def wait_until_active(argv: list[str], poll_seconds: float = WAIT_POLL_SECONDS) -> None:
  """Polls the queued resource until it is ACTIVE; fails on FAILED / SUSPENDED."""
  while True:
    state = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()
    print(f"queued resource state: {state}", flush=True)
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED"):
      raise commands.LaunchError(f"queued resource is {state}")
    time.sleep(poll_seconds)


def main(argv: Sequence[str] | None = None) -> None:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    _launch(args, overrides)
  except commands.LaunchError as e:
    sys.exit(f"error: {e}")


def _launch(args: argparse.Namespace, overrides: tuple[str, ...]) -> None:
  archive_path = os.path.join(tempfile.gettempdir(), commands.SOURCE_ARCHIVE)
  for kind, step in plan(args, overrides, archive_path):
    if kind == "wait":
      if args.dry_run:
        print("# repeated until it prints ACTIVE:")
        commands.execute([step], dry_run=True)
      else:
        print("+ " + shlex.join(step), flush=True)
        wait_until_active(step)
    else:
      commands.execute([step], dry_run=args.dry_run)


if __name__ == "__main__":
  main()
