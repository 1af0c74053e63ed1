r"""Base Wan beside Wan-VideoJAM: one HTML page from `generate` folders.

  python -m videojam_jax.generate --config configs/wan21_generate.py --workdir out/base \
      --config.pipeline_dir=Wan2.1-T2V-1.3B-Diffusers --config.prompts='(...)'
  python -m videojam_jax.generate --config configs/wan21_generate.py --workdir out/jam \
      --config.pipeline_dir=Wan2.1-T2V-1.3B-VideoJAM --config.prompts='(...)'
  python -m videojam_jax.compare --out out/page/index.html --samples base=out/base \
      --samples videojam=out/jam
"""

from absl import app
from absl import flags

from videojam_jax.evaluation import generated_page

_OUT = flags.DEFINE_string("out", None, "The HTML file to write.")
_SAMPLES = flags.DEFINE_multi_string(
    "samples", [], "name=folder: a `generate` --workdir, one column (repeat, in order).")
flags.mark_flags_as_required(["out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  columns = {}
  for item in _SAMPLES.value:
    name, sep, folder = item.partition("=")
    if not sep or not name or not folder:
      raise app.UsageError(f"--samples takes name=folder, got {item!r}")
    columns[name] = folder
  try:
    print(generated_page.write_comparison(columns, _OUT.value))
  except generated_page.ComparisonError as e:
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  app.run(main)
