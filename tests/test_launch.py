"""launch/: the commands printed by --dry_run, and that without it they are executed."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from launch import commands
from launch import tpu_vm
from launch import xpk

TPU_ARGS = ["--tpu_name=my-v5p", "--zone=us-east5-a", "--project=proj",
            "--config=configs/dit_4b.py", "--workdir=gs://bkt/runs/dit4b"]
XPK_ARGS = ["--cluster=c1", "--workload=dit30b-1", "--tpu_type=v5p-128", "--project=proj",
            "--zone=us-east5-a", "--config=configs/dit_30b.py", "--workdir=/gcs/bkt/runs/30b"]


def dry_run(module, argv, capsys) -> list[list[str]]:
  """The printed commands, split back into argv lists (comment lines dropped)."""
  module.main([*argv, "--dry_run"])
  lines = capsys.readouterr().out.strip().splitlines()
  return [shlex.split(line) for line in lines if not line.startswith("#")]


def test_tpu_vm_minimal_runs_training_on_every_worker(capsys):
  (ssh,) = dry_run(tpu_vm, [*TPU_ARGS, "--config.train.batch_size=64"], capsys)
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v5p"]
  assert {"--zone=us-east5-a", "--project=proj", "--worker=all"} <= set(ssh)
  script = ssh[-1].removeprefix("--command=")
  # gs:// paths go to the trainer as typed: no mount, no rewriting.
  assert script == (
      "cd videojam_jax && export VIDEOJAM_DISTRIBUTED=1 && "
      "python3 -m videojam_jax.train --config configs/dit_4b.py "
      "--workdir=gs://bkt/runs/dit4b --config.train.batch_size=64")


def test_tpu_vm_opt_in_gcsfuse_mounts_and_rewrites(capsys):
  (ssh,) = dry_run(tpu_vm, [*TPU_ARGS, "--mount_gcs_with_gcsfuse",
                            "--config.data.dataset_dir=gs://data/latents",
                            "--config.train.batch_size=64"], capsys)
  script = ssh[-1].removeprefix("--command=")
  assert script == (
      "cd videojam_jax && mkdir -p /tmp/gcs/bkt && (mountpoint -q /tmp/gcs/bkt || "
      "gcsfuse --implicit-dirs bkt /tmp/gcs/bkt) && mkdir -p /tmp/gcs/data && "
      "(mountpoint -q /tmp/gcs/data || gcsfuse --implicit-dirs data /tmp/gcs/data) && "
      "export VIDEOJAM_DISTRIBUTED=1 && python3 -m videojam_jax.train --config "
      "configs/dit_4b.py --workdir=/tmp/gcs/bkt/runs/dit4b "
      "--config.data.dataset_dir=/tmp/gcs/data/latents --config.train.batch_size=64")


def test_tpu_vm_gcsfuse_mount_root(capsys):
  (ssh,) = dry_run(tpu_vm, [*TPU_ARGS, "--mount_gcs_with_gcsfuse", "--mount_root=/mnt/buckets"],
                   capsys)
  script = ssh[-1]
  assert "gcsfuse --implicit-dirs bkt /mnt/buckets/bkt" in script
  assert "--workdir=/mnt/buckets/bkt/runs/dit4b" in script
  assert "gs://" not in script


def test_tpu_vm_mount_root_needs_the_gcsfuse_flag(capsys):
  with pytest.raises(SystemExit):
    tpu_vm.main([*TPU_ARGS, "--mount_root=/mnt/buckets", "--dry_run"])
  assert "--mount_gcs_with_gcsfuse" in capsys.readouterr().err


def test_tpu_vm_full_sequence(capsys):
  steps = dry_run(tpu_vm, [*TPU_ARGS, "--create", "--accelerator_type=v5p-32",
                           "--runtime_version=v2-alpha-tpuv5", "--spot", "--sync_code",
                           "--install", "--detach", "--env=FOO=a b",
                           "--config.data.dataset_dir=gs://data/latents"], capsys)
  assert [s[:5] for s in steps] == [
      ["gcloud", "compute", "tpus", "queued-resources", "create"],
      ["gcloud", "compute", "tpus", "queued-resources", "describe"],
      ["git", "archive", "--format=tar.gz", steps[2][3], "HEAD"],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  create = steps[0]
  assert create[5:] == ["my-v5p", "--node-id=my-v5p", "--zone=us-east5-a", "--project=proj",
                        "--accelerator-type=v5p-32", "--runtime-version=v2-alpha-tpuv5", "--spot"]
  assert steps[1][-1] == "--format=value(state.state)"
  assert steps[3][5:7] == [steps[2][3].removeprefix("--output="), "my-v5p:videojam_jax_src.tar.gz"]
  assert steps[4][-1] == "--command=mkdir -p videojam_jax && tar -xzf videojam_jax_src.tar.gz -C videojam_jax"
  assert "pip install -q -r requirements.txt 'jax[tpu]'" in steps[5][-1]
  train = steps[6][-1]
  # gs:// paths unchanged and nothing mounted; env quoted; detached with a log.
  assert "gcsfuse" not in train and "/tmp/gcs" not in train
  assert "--workdir=gs://bkt/runs/dit4b --config.data.dataset_dir=gs://data/latents" in train
  assert "export FOO='a b'" in train
  assert train.endswith("< /dev/null >> train.log 2>&1 &")
  assert "nohup python3 -m videojam_jax.train" in train


def test_tpu_vm_create_needs_type_and_runtime(capsys):
  with pytest.raises(SystemExit):
    tpu_vm.main([*TPU_ARGS, "--create", "--dry_run"])
  assert "--accelerator_type" in capsys.readouterr().err


def test_xpk_base_image(capsys):
  (create,) = dry_run(xpk, [*XPK_ARGS, "--base_docker_image=videojam-base:latest",
                            "--num_slices=2", "--config.train.num_steps=10"], capsys)
  assert create == [
      "xpk", "workload", "create", "--cluster=c1", "--workload=dit30b-1", "--tpu-type=v5p-128",
      "--num-slices=2", "--base-docker-image=videojam-base:latest",
      "--command=cd /app && export VIDEOJAM_DISTRIBUTED=1 && python3 -m videojam_jax.train "
      "--config configs/dit_30b.py --workdir=/gcs/bkt/runs/30b --config.train.num_steps=10",
      "--project=proj", "--zone=us-east5-a"]


def test_xpk_prebuilt_image(capsys):
  (create,) = dry_run(xpk, [*XPK_ARGS, "--docker_image=gcr.io/proj/videojam:1",
                            "--repo_dir=/workspace/videojam"], capsys)
  assert "--docker-image=gcr.io/proj/videojam:1" in create
  assert not any(a.startswith("--base-docker-image") for a in create)
  assert create[-3].startswith("--command=cd /workspace/videojam && ")


def test_xpk_passes_gcs_paths_through(capsys):
  (create,) = dry_run(xpk, [*XPK_ARGS[:-1], "--workdir=gs://bkt/run", "--docker_image=img",
                            "--config.data.dataset_dir=gs://data/clips"], capsys)
  (command,) = [a for a in create if a.startswith("--command=")]
  assert command == (
      "--command=cd /app && export VIDEOJAM_DISTRIBUTED=1 && python3 -m videojam_jax.train "
      "--config configs/dit_30b.py --workdir=gs://bkt/run "
      "--config.data.dataset_dir=gs://data/clips")


def test_xpk_needs_an_image(capsys):
  with pytest.raises(SystemExit):
    xpk.main([*XPK_ARGS, "--dry_run"])


def test_bad_override_and_env():
  with pytest.raises(commands.LaunchError, match="--config.key=value"):
    commands.TrainJob("c.py", "/w", ("--config.train.batch_size",))
  with pytest.raises(commands.LaunchError, match="KEY=value"):
    commands.parse_env(["no_equals_sign"])


def test_without_dry_run_the_printed_commands_are_executed(monkeypatch, capsys):
  ran = []
  monkeypatch.setattr(subprocess, "run", lambda argv, **kw: ran.append((argv, kw)))
  xpk.main([*XPK_ARGS, "--docker_image=img"])
  printed = capsys.readouterr().out.strip()
  assert printed.startswith("+ ")
  ((argv, kwargs),) = ran
  assert shlex.split(printed[2:]) == argv
  assert kwargs["check"] is True


def test_entry_point_runs_as_a_module():
  result = subprocess.run([sys.executable, "-m", "launch.xpk", *XPK_ARGS, "--docker_image=img",
                           "--dry_run"], cwd=commands.REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("xpk workload create ")
