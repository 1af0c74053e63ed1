"""The commands that launch/ runs: the training command and its gcloud / xpk wrappers.

Pure functions from settings to argv lists (no I/O), so that `--dry_run` prints
exactly what would be executed and the tests can check it. Every host of a
slice runs the same command as a local run (`python -m videojam_jax.train
--config ... --workdir ...`) with VIDEOJAM_DISTRIBUTED=1, which makes train.py
call `jax.distributed.initialize()` (JAX finds the other hosts itself).

gs:// paths are passed to the trainer unchanged: it reads and writes its
workdir and datasets through etils.epath, Orbax (tensorstore's own GCS driver),
TFDS and ArrayRecord (native GCS reader), which all take gs:// URIs. Without
TensorFlow, etils.epath reaches gs:// through fsspec's `gcsfs` and Orbax lists
checkpoint steps on gs:// with `google-cloud-storage`; both are in
requirements.txt. For images where that is not set up, `gcs_buckets`,
`mount_gcs_paths` and `gcsfuse_mount_lines` mount each bucket with Cloud
Storage FUSE (gcsfuse) instead and rewrite the paths to the mount points
(tpu_vm.py's opt-in `--mount_gcs_with_gcsfuse`).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GCS_PREFIX = "gs://"
DISTRIBUTED_ENV = {"VIDEOJAM_DISTRIBUTED": "1"}
DEFAULT_MOUNT_ROOT = "/tmp/gcs"       # writable without sudo on every TPU VM
SOURCE_ARCHIVE = "videojam_jax_src.tar.gz"


class LaunchError(ValueError):
  """The launch settings cannot work; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class TrainJob:
  """What to train: the same arguments as a local `python -m videojam_jax.train`."""
  config: str                          # config file, relative to the repository root
  workdir: str
  overrides: tuple[str, ...] = ()      # "--config.key=value" flags
  env: tuple[tuple[str, str], ...] = ()
  python: str = "python3"

  def __post_init__(self):
    bad = [o for o in self.overrides if not o.startswith("--config.") or "=" not in o]
    if bad:
      raise LaunchError(f"overrides must look like --config.key=value, got {bad}")


def parse_env(pairs: Iterable[str]) -> tuple[tuple[str, str], ...]:
  """['KEY=value', ...] -> (('KEY', 'value'), ...)."""
  out = []
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key.isidentifier():
      raise LaunchError(f"--env takes KEY=value, got {pair!r}")
    out.append((key, value))
  return tuple(out)


def train_argv(job: TrainJob) -> list[str]:
  """The training command itself."""
  return [job.python, "-m", "videojam_jax.train", "--config", job.config,
          f"--workdir={job.workdir}", *job.overrides]


def gcs_buckets(job: TrainJob) -> list[str]:
  """Buckets named by gs:// paths in the workdir and the overrides, in order."""
  values = [job.workdir] + [o.split("=", 1)[1] for o in job.overrides]
  buckets = []
  for value in values:
    if value.startswith(GCS_PREFIX):
      bucket = value[len(GCS_PREFIX):].split("/", 1)[0]
      if bucket and bucket not in buckets:
        buckets.append(bucket)
  return buckets


def mount_gcs_paths(job: TrainJob, mount_root: str = DEFAULT_MOUNT_ROOT) -> TrainJob:
  """The job with every gs://BUCKET/path rewritten to MOUNT_ROOT/BUCKET/path (gcsfuse mode)."""
  rewrite = lambda v: (f"{mount_root}/{v[len(GCS_PREFIX):]}" if v.startswith(GCS_PREFIX) else v)
  overrides = tuple(f"{o.split('=', 1)[0]}={rewrite(o.split('=', 1)[1])}" for o in job.overrides)
  return dataclasses.replace(job, workdir=rewrite(job.workdir), overrides=overrides)


def gcsfuse_mount_lines(buckets: Sequence[str], mount_root: str = DEFAULT_MOUNT_ROOT) -> list[str]:
  """Shell lines mounting each bucket at MOUNT_ROOT/BUCKET (skipped if already mounted).

  Only for the opt-in gcsfuse mode: by default gs:// paths reach the trainer as is.
  """
  lines = []
  for bucket in buckets:
    point = shlex.quote(f"{mount_root}/{bucket}")
    lines.append(f"mkdir -p {point}")
    lines.append(f"(mountpoint -q {point} || gcsfuse --implicit-dirs {shlex.quote(bucket)} {point})")
  return lines


def host_script(job: TrainJob, repo_dir: str, *, setup: Sequence[str] = (),
                distributed: bool = True, log_file: str | None = None) -> str:
  """One shell command line for every host: cd, setup lines, env, train.

  With `log_file` the training runs detached (nohup, output appended to the
  file), so the launching ssh session can end while training goes on.
  """
  env = dict(DISTRIBUTED_ENV if distributed else {})
  env.update(job.env)
  train = shlex.join(train_argv(job))
  if log_file:
    train = f"nohup {train} < /dev/null >> {shlex.quote(log_file)} 2>&1 &"
  exports = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
  return " && ".join([f"cd {shlex.quote(repo_dir)}", *setup, *exports, train])


# --- gcloud: Cloud TPU VMs and queued resources.

def _gcloud_location(zone: str, project: str | None) -> list[str]:
  return [f"--zone={zone}"] + ([f"--project={project}"] if project else [])


def queued_resource_create(name: str, *, node_id: str, zone: str, project: str | None,
                           accelerator_type: str, runtime_version: str,
                           spot: bool = False) -> list[str]:
  """Requests a TPU slice as a queued resource (it becomes a TPU VM named node_id)."""
  return (["gcloud", "compute", "tpus", "queued-resources", "create", name,
           f"--node-id={node_id}", *_gcloud_location(zone, project),
           f"--accelerator-type={accelerator_type}", f"--runtime-version={runtime_version}"]
          + (["--spot"] if spot else []))


def queued_resource_state(name: str, *, zone: str, project: str | None) -> list[str]:
  """Prints the queued resource's state (ACTIVE once the slice is up)."""
  return ["gcloud", "compute", "tpus", "queued-resources", "describe", name,
          *_gcloud_location(zone, project), "--format=value(state.state)"]


def tpu_vm_ssh(tpu_name: str, command: str, *, zone: str, project: str | None) -> list[str]:
  """Runs `command` on every host (worker) of the TPU VM slice."""
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu_name, *_gcloud_location(zone, project),
          "--worker=all", f"--command={command}"]


def tpu_vm_scp(local_path: str, remote_path: str, tpu_name: str, *, zone: str,
               project: str | None) -> list[str]:
  """Copies a local file to every host of the slice."""
  return ["gcloud", "compute", "tpus", "tpu-vm", "scp", local_path, f"{tpu_name}:{remote_path}",
          *_gcloud_location(zone, project), "--worker=all"]


def source_archive(local_path: str) -> list[str]:
  """Packs the committed tree (HEAD) of the repository this runs in."""
  return ["git", "archive", "--format=tar.gz", f"--output={local_path}", "HEAD"]


# --- xpk: GKE.

def xpk_workload_create(*, cluster: str, workload: str, tpu_type: str, num_slices: int,
                        command: str, project: str | None, zone: str | None,
                        docker_image: str | None = None,
                        base_docker_image: str | None = None) -> list[str]:
  """Submits `command` to every TPU host of `num_slices` slices of `tpu_type`.

  With `base_docker_image` (a local image), xpk builds an image from it plus its
  working directory, copied to /app (run it from the repository root); with
  `docker_image` it runs that image as is.
  """
  if (docker_image is None) == (base_docker_image is None):
    raise LaunchError("give exactly one of --docker_image and --base_docker_image")
  image = ([f"--docker-image={docker_image}"] if docker_image
           else [f"--base-docker-image={base_docker_image}"])
  return (["xpk", "workload", "create", f"--cluster={cluster}", f"--workload={workload}",
           f"--tpu-type={tpu_type}", f"--num-slices={num_slices}", *image, f"--command={command}"]
          + ([f"--project={project}"] if project else []) + ([f"--zone={zone}"] if zone else []))


# --- Running.

def execute(commands: Sequence[Sequence[str]], *, dry_run: bool, out=None,
            runner: Callable[..., object] | None = None) -> None:
  """Prints each command (shell-quoted, one per line) and runs it unless `dry_run`.

  Commands run from the repository root (xpk packs its working directory and
  `git archive` reads the repository there).
  """
  out = out or sys.stdout
  runner = runner or subprocess.run
  for argv in commands:
    print(("" if dry_run else "+ ") + shlex.join(argv), file=out, flush=True)
    if not dry_run:
      runner(list(argv), check=True, cwd=REPO_ROOT)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
  """(launcher arguments, --config.key=value overrides) from a command line."""
  overrides = tuple(a for a in argv if a.startswith("--config."))
  return [a for a in argv if not a.startswith("--config.")], overrides
