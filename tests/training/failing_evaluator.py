"""An evaluator for the tests: yields a constant, or raises at `fail_at_step`.

Selected by its dotted module path (config.evals.<name>.type =
"tests.training.failing_evaluator"), as a user's own evaluator would be.
"""

from collections.abc import Iterator
from typing import Any


class Evaluator:

  def __init__(self, options, context):
    del context
    self.fail_at_step = int(options.get("fail_at_step", 0))

  def run(self, params: Any, step: int) -> Iterator[tuple[str, float]]:
    del params
    if step == self.fail_at_step:
      raise RuntimeError(f"evaluator failed on purpose at step {step}")
    yield "constant", 1.0
