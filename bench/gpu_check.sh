#!/usr/bin/env bash
# The GPU production path in one prepared check (issue 11): under 10 minutes on one GPU, one table.
#
#   bash bench/gpu_check.sh [--out DIR] [--keep] [--only 2,5]
#
# Sets the machine up, then runs bench/gpu_check.py (which says what each check does):
# - where a GPU is present but torch has no CUDA, installs a CUDA build of torch (PyPI's default build);
# - installs lorakit (editable) when it is not importable: from $LORAKIT_WHEELS (a folder of wheels, for
#   a machine without network: pip install --no-index --find-links) when set, else from the index.
# Without a GPU it runs what a CPU can (bf16/fp16 autocast on the CPU, --nproc 2 on gloo, the OOM retry on
# fake GPUs), skips the rest saying why, and exits 0 unless a check that ran failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

pip_install() {
    if [ -n "${LORAKIT_WHEELS:-}" ]; then
        "$PY" -m pip install --quiet --no-index --find-links "$LORAKIT_WHEELS" "$@"
    else
        "$PY" -m pip install --quiet "$@"
    fi
}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "# a GPU is present but torch has no CUDA: installing a CUDA build of torch" >&2
        pip_install --upgrade "torch>=2.1" || echo "# could not install a CUDA build of torch" >&2
    fi
fi
if ! "$PY" -c 'import lorakit.training.precision' 2>/dev/null; then
    echo "# installing lorakit" >&2
    pip_install -e . || { echo "# could not install lorakit" >&2; exit 1; }
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$PY" bench/gpu_check.py "$@"
