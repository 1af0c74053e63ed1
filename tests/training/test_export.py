"""videojam_jax/training/export.py: which runs export, and the errors for the rest.

The export itself (a trained Wan run -> WanTransformer3DModel, read back) runs in
tests/test_train_wan.py through `python -m videojam_jax.export`.
"""

import pytest

from configs import tiny
from configs import wan_tiny
from videojam_jax.training import export
from videojam_jax.training import runs


def write_run_config(workdir, config):
  workdir.mkdir()
  (workdir / runs.CONFIG_FILE).write_text(config.to_json_best_effort())
  return str(workdir)


def test_runs_without_a_diffusers_counterpart_are_refused(tmp_path):
  dit_run = write_run_config(tmp_path / "dit", tiny.get_config())
  with pytest.raises(export.ExportError, match="a 'dit' run has no diffusers counterpart"):
    export.export_run(dit_run, tmp_path / "out")
  builtin_text = write_run_config(tmp_path / "wan", wan_tiny.get_config())
  with pytest.raises(export.ExportError, match="own byte-level text encoder"):
    export.export_run(builtin_text, tmp_path / "out")
  with pytest.raises(runs.RunNotFoundError, match="is it a training workdir"):
    export.export_run(str(tmp_path / "nothing"), tmp_path / "out")
  assert not (tmp_path / "out").exists()
