"""Shared fixtures: a tiny config, a tiny synthetic dataset, tiny compiled models.

Everything expensive (dataset build, model init, jitted forward passes) is
session-scoped so that the test modules share one build and one compile each.
Slow subprocesses (the real train command) can be registered with `start_early`:
they start as soon as collection ends and run beside the other tests.
"""

from __future__ import annotations

import dataclasses
import os

# Tests run on the CPU. With libtpu installed (for the AOT check), JAX would
# otherwise probe for a TPU at start-up; subprocesses inherit this too.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The test models are tiny: XLA's backend optimisations cost more compile time than
# they save in run time (they halve a forward pass's compile on 2 CPU cores). Set
# before JAX starts, for this process and every subprocess a test starts.
_FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_XLA_FLAGS}".strip()
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from videojam_jax.data import text as text_lib
from videojam_jax.model import dit
from videojam_jax.model import functional
from videojam_jax.parallel import sharding

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_TRAIN_CLIPS, TINY_EVAL_CLIPS = 16, 4
# The test models are tiny: compile time dominates, and XLA's backend optimisations
# cost more than they save (halves the compile of a forward pass on 2 CPU cores).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
CAPTIONS = ("a red ball bounces to the left", "a blue square falls")
# One XLA compilation cache for every subprocess the tests start (train, evaluate,
# generate, export): reruns and resumes compile the same programs, often across test
# modules. Keys cover the program, flags and backend, so a hit is the same program.
# Made by the first process (pytest-xdist's controller, or pytest alone); its workers
# inherit the folder through the environment, and the first process removes it.
_OWNS_XLA_CACHE = "VIDEOJAM_TEST_XLA_CACHE" not in os.environ
if _OWNS_XLA_CACHE:
  os.environ["VIDEOJAM_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="videojam_xla_cache_")
SUBPROCESS_XLA_CACHE = os.environ["VIDEOJAM_TEST_XLA_CACHE"]


def subprocess_env() -> dict[str, str]:
  """The environment for the real entry points run as subprocesses: this checkout on
  the path, the CPU, and the shared compilation cache (every program cached)."""
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=SUBPROCESS_XLA_CACHE,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def tiny_config(dataset_dir: str = "", *, jam: bool = True) -> ml_collections.ConfigDict:
  """configs/tiny.py (4x16x16 clips, a 2-block width-32 DiT), made smaller still for unit tests."""
  config = tiny.get_config()
  config.compilation_cache_dir = ""      # tests must not write into ~/.cache
  config.data.dataset_dir = str(dataset_dir)
  config.data.synthetic.num_train_clips = TINY_TRAIN_CLIPS
  config.data.synthetic.num_eval_clips = TINY_EVAL_CLIPS
  config.data.prefetch_buffer_size = 0
  config.data.read_threads = 1
  config.model.jam = jam
  config.model.text.embedding_dim = 32
  config.train.num_steps = 2
  config.train.checkpoint_every = 1
  config.optim.warmup_steps = 1
  config.evals.samples.num_prompts = 1
  config.evals.samples.batch_size = 1
  config.sample.num_steps = 1
  return config


@pytest.fixture(scope="session")
def make_tiny_config() -> Callable[..., ml_collections.ConfigDict]:
  """Factory for fresh tiny configs: make_tiny_config(dataset_dir="", jam=True)."""
  return tiny_config


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> tuple[str, str]:
  """(dataset_dir, version_dir) of a 16-train / 4-eval synthetic dataset at 4x16x16."""
  from data_pipelines import synthetic_dataset
  dataset_dir = str(tmp_path_factory.mktemp("synthetic"))
  return dataset_dir, synthetic_dataset.build(tiny_config(dataset_dir))


def perturb(params: Any, seed: int, scale: float = 0.2,
            keep: tuple[str, ...] = ()) -> Any:
  """`params` plus N(0, scale^2) noise on every leaf (zero-initialised ones included),
  except top-level entries named in `keep`: stands in for a trained checkpoint whose
  heads and adaLN gates are no longer zero."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, sub in params.items():
    if name in keep:
      out[name] = sub
    else:
      out[name] = jax.tree.map(
          lambda a: (np.asarray(a) + scale * rng.standard_normal(np.shape(a))).astype(np.asarray(a).dtype),
          sub)
  return out


@pytest.fixture(scope="session")
def perturb_params() -> Callable[..., Any]:
  return perturb


@dataclasses.dataclass
class TinyModel:
  config: ml_collections.ConfigDict
  model: functional.FunctionalModel
  init_params: Any        # freshly initialised, on host (zero-init heads stay zero)
  apply: Callable         # jitted (params, x_t, d_t, t, text, text_mask, text_keep) -> (u_x, u_d)


def _tiny_model(jam: bool) -> TinyModel:
  config = tiny_config(jam=jam)
  model = functional.build(config.model, dit.VideoShape.from_data_config(config.data),
                           sharding.ShardingPlan.from_config(config.mesh))
  # An RngBitGenerator key compiles the initialisers much faster than threefry.
  params = jax.device_get(model.init(jax.random.key(0, impl="unsafe_rbg")))
  apply = jax.jit(model.apply, compiler_options=FAST_COMPILE)
  return TinyModel(config, model, params, apply)


@pytest.fixture(scope="session")
def tiny_jam() -> TinyModel:
  """A tiny VideoJAM model (jam=True); its jitted apply is shared by all tests."""
  return _tiny_model(jam=True)


@pytest.fixture(scope="session")
def tiny_base() -> TinyModel:
  """The same tiny DiT without VideoJAM projections (jam=False)."""
  return _tiny_model(jam=False)


@pytest.fixture(scope="session")
def model_inputs() -> dict[str, jnp.ndarray]:
  """Random inputs for a batch of 2 at the tiny clip size (captions CAPTIONS)."""
  config = tiny_config()
  d = config.data
  rng = np.random.default_rng(0)
  shape = (2, d.num_frames, d.height, d.width, 3)
  ids, mask = text_lib.tokenize(list(CAPTIONS), config.model.text.max_length)
  return dict(x_t=jnp.asarray(rng.standard_normal(shape), jnp.float32),
              d_t=jnp.asarray(rng.standard_normal(shape), jnp.float32),
              t=jnp.asarray([0.3, 0.8], jnp.float32),
              text=jnp.asarray(ids), text_mask=jnp.asarray(mask),
              text_keep=jnp.ones((2,), bool))


class BackgroundCommand:
  """A subprocess writing stdout+stderr to a log, started early and awaited by a test."""

  def __init__(self, argv: list[str], workdir: pathlib.Path, env: dict[str, str] | None = None):
    self.workdir = workdir
    self._log_path = workdir / "log.txt"
    self._log = open(self._log_path, "w")
    self.process = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **(env or {})},
                                    stdout=self._log, stderr=subprocess.STDOUT)

  def result(self, timeout: float = 600) -> tuple[int, str]:
    """Waits for the command; returns (returncode, output)."""
    returncode = self.process.wait(timeout=timeout)
    self._log.close()
    return returncode, self._log_path.read_text()

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.kill()
      self.process.wait()
    self._log.close()
    shutil.rmtree(self.workdir, ignore_errors=True)


# fixture name -> start(workdir) for commands that selected tests need.
_EARLY_STARTERS: dict[str, Callable[[pathlib.Path], BackgroundCommand]] = {}
_STARTED: dict[str, BackgroundCommand] = {}


def start_early(fixture_name: str):
  """Decorator for `start(workdir) -> BackgroundCommand`: it runs when collection ends if a
  selected test uses the fixture `fixture_name` (which gets it with `started_command`)."""
  def register(start):
    _EARLY_STARTERS[fixture_name] = start
    return start
  return register


def started_command(fixture_name: str) -> BackgroundCommand:
  """The command registered for `fixture_name`, started now if it was not started early."""
  if fixture_name not in _STARTED:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"videojam_{fixture_name}_"))
    _STARTED[fixture_name] = _EARLY_STARTERS[fixture_name](workdir)
  return _STARTED[fixture_name]


def pytest_collection_finish(session):
  # Under pytest-xdist every worker collects every test but runs only some: starting
  # their commands early would run each once per worker. The workers already run
  # side by side; there the commands start when a test first needs them.
  if session.config.option.collectonly or os.environ.get("PYTEST_XDIST_WORKER"):
    return
  used = {name for item in session.items for name in getattr(item, "fixturenames", ())}
  for name in _EARLY_STARTERS:
    if name in used:
      started_command(name)


def pytest_sessionfinish(session):
  while _STARTED:
    _STARTED.popitem()[1].stop()
  if _OWNS_XLA_CACHE:
    shutil.rmtree(SUBPROCESS_XLA_CACHE, ignore_errors=True)


# Python source that hides TensorFlow the way an image without it does: `import
# tensorflow` fails and importlib.util.find_spec("tensorflow") is None. (Setting
# sys.modules["tensorflow"] to None is not the same: TFDS and etils take
# "tensorflow" in sys.modules to mean it is loaded.) Prepend it to code run with
# `python -c`.
HIDE_TENSORFLOW = """
import importlib.machinery, importlib.util, sys

class _HideTensorFlow(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.partition(".")[0] == "tensorflow":
      return None
    return importlib.machinery.PathFinder.find_spec(name, path, target)

sys.meta_path[:] = [_HideTensorFlow if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
assert importlib.util.find_spec("tensorflow") is None
"""
