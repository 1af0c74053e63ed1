"""Evaluators: what the trainer (and `evaluate`) measure, picked by a config block.

big_vision's pattern. Each block of `config.evals` names one evaluator:

  config.evals.heldout = dict(type="heldout_loss", every_steps=100, weights="ema", ...)
  config.evals.samples = dict(type="samples", every_steps=400, ...)

`every_steps` > 0 runs it at every multiple and at the last step; 0 turns it off.
`type` is a module in this package (heldout_loss, samples) or the dotted path of
any module with an `Evaluator` class: users add their own without touching the
trainer. `Evaluator(options, context)` gets the block's other fields and the run's
`EvalContext`; `evaluator.run(params, step)` yields (name, value) pairs, which the
trainer writes as `<block name>/<name>`. `every_steps` and `weights` ("ema" or
"params": which of the train state's weights it sees) are the trainer's.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator
from typing import Any, Protocol

import ml_collections
from etils import epath

from videojam_jax.training import experiment as experiment_lib

SCHEDULE_FIELDS = ("type", "every_steps", "weights")
WEIGHTS = ("ema", "params")


class EvaluatorConfigError(ValueError):
  """An evals block cannot be used."""


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What every evaluator may use: the run's experiment and where it may write files."""
  experiment: experiment_lib.Experiment
  workdir: epath.Path | None     # None: the evaluator writes no files


class Evaluator(Protocol):
  def run(self, params: Any, step: int) -> Iterator[tuple[str, float]]:
    """Evaluates `params` (a train state's params or EMA) at `step`."""


@dataclasses.dataclass
class Scheduled:
  """One configured evaluator and when the trainer runs it."""
  name: str
  evaluator: Evaluator
  every_steps: int
  weights: str

  def due(self, step: int, final: bool) -> bool:
    """At every multiple of every_steps and at the last step; never if every_steps is 0."""
    return self.every_steps > 0 and (final or step % self.every_steps == 0)


def evaluator_class(type_name: str) -> type:
  """The `Evaluator` class of a built-in evaluator name or a dotted module path."""
  module_name = type_name if "." in type_name else f"{__name__}.{type_name}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name and not module_name.startswith(f"{e.name}."):
      raise
    raise EvaluatorConfigError(
        f"evaluator type {type_name!r}: no module {module_name!r} (built in: heldout_loss, caption_swap, "
        "samples; or give the dotted path of a module with an Evaluator class)") from e
  if not hasattr(module, "Evaluator"):
    raise EvaluatorConfigError(f"evaluator module {module_name!r} has no Evaluator class")
  return module.Evaluator


def create(evals_config: ml_collections.ConfigDict, context: EvalContext) -> list[Scheduled]:
  """The evaluators `evals_config` (config.evals) names, in its order."""
  scheduled = []
  for name, block in evals_config.items():
    if "type" not in block:
      raise EvaluatorConfigError(f"evals.{name} needs a 'type'")
    every = int(block.get("every_steps", 0))
    weights = str(block.get("weights", "ema"))
    if every < 0:
      raise EvaluatorConfigError(f"evals.{name}.every_steps={every} must be >= 0 (0: off)")
    if weights not in WEIGHTS:
      raise EvaluatorConfigError(f"evals.{name}.weights={weights!r}: choose one of {WEIGHTS}")
    options = {k: v for k, v in block.items() if k not in SCHEDULE_FIELDS}
    cls = evaluator_class(str(block.type))
    if every == 0:
      continue   # off: not built (it may load data or compile)
    evaluator = cls(ml_collections.ConfigDict(options), context)
    scheduled.append(Scheduled(name, evaluator, every, weights))
  return scheduled


def option(options: ml_collections.ConfigDict, name: str, default: Any) -> Any:
  """options[name], or `default` when the block leaves it out."""
  return options.get(name, default)


def check_known(options: ml_collections.ConfigDict, known: tuple[str, ...], type_name: str) -> None:
  """A misspelt option is an error, not a silently ignored field."""
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise EvaluatorConfigError(f"{type_name} evaluator: unknown option(s) {unknown}; "
                               f"known: {sorted(known)}")
