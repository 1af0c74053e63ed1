#!/usr/bin/env bash
# The paper's protocol on one GPU machine (configs/protocol_gpu.py), through the real
# `python -m videojam_jax.protocol` entry point, then its results packed for copying back.
#
#   OUT=/tmp/protocol_out bash benchmarks/protocol_gpu.sh [extra --config.* flags]
#
# For a machine image without the packages requirements.txt names (grain, array-record,
# TFDS, ml_collections, clu, tensorboardX): wheels in .whl/ (../shared/device/fetch-wheels.sh
# tensorboardX importlib_resources portpicker googleapis-common-protos; grain needs
# portpicker) are installed first. Clips are written as GIF because
# such an image has no imageio-ffmpeg; elsewhere, `python -m videojam_jax.rewrite_clips
# --eval_dir DIR/eval` turns them into MP4 (and rebuilds the page) from the clips.npz files.
# PROTOCOL_SECONDS (default 480) bounds the run, so that what finished is packed anyway
# (rerunning the same command skips finished stages).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then  # NO_WHEELS=1: the packages are installed
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/* || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to the folder the packed results go to}
WORKDIR=${WORKDIR:-/tmp/protocol_gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/machine.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/machine.txt"
start=$(date +%s)
timeout "${PROTOCOL_SECONDS:-480}" "${PYTHON:-python3}" -m videojam_jax.protocol --config configs/protocol_gpu.py \
  --workdir "$WORKDIR" --config.evaluation.report.video_format=gif "$@" > "$OUT/protocol_log.txt" 2>&1
rc=$?
echo "protocol exit code $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/machine.txt"
# The log without progress-bar redraws, for reading here.
tr '\r' '\n' < "$OUT/protocol_log.txt" | grep -v "it/s\]\|s/it\]\|setting/s\]\|s/setting\]\|examples/s\]" \
  | tail -40
# Everything but the checkpoints (too large to copy back) and the GIFs (rewritten from
# clips.npz), in 15 MB parts (a copy-back limit): cat protocol_gpu.tar.* | tar -x
tar -C "$WORKDIR" --exclude=checkpoints --exclude='*.gif' -cf - . \
  | split -b 15m - "$OUT/protocol_gpu.tar." && ls -la "$OUT"
exit $rc
