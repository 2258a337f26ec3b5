#!/usr/bin/env bash
# The serving benchmark (benchmarks/gpu.py) on a GPU machine, or small on this CPU.
#
# A device call carries at most 64 MiB, and the machine lacks rasterio, titiler and their kin
# (~52 MB of wheels) besides the weights (30 MB in fp16): so two calls, back to back, while the
# machine stays warm (what the first installs under .gpukit/site stays there):
#   make gpu-kit                                                   # here: .gpukit/{wheels,bundle,oam}
#   device run, carry [.gpukit/wheels]:              benchmarks/gpu.sh install
#   device run, carry [.gpukit/bundle, .gpukit/oam]: benchmarks/gpu.sh run
# Here (tests/test_benchmarks.py runs this, so the script cannot rot):
#   benchmarks/gpu.sh --small [IMAGES_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
  install)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target .gpukit/site .gpukit/wheels/*.whl
    echo "installed $(ls .gpukit/wheels | wc -l) wheels into .gpukit/site"
    ;;
  run)
    export PYTHONPATH="$PWD/service:$PWD/export:$PWD:$PWD/.gpukit/site" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    timeout 560 python3 -m benchmarks.gpu --bundle .gpukit/bundle --images .gpukit/oam
    ;;
  --small)
    PYTHONUNBUFFERED=1 "${PYTHON:-.venv/bin/python}" -m benchmarks.gpu --small \
      --bundle "${DINOTILES_DEMO_DIR:-.dinotiles}/bundle" --images "${2:-../shared/data/oam}"
    ;;
  *)
    echo "usage: benchmarks/gpu.sh install | run | --small [IMAGES_DIR]" >&2
    exit 2
    ;;
esac
