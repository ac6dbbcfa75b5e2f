#!/usr/bin/env bash
# The GPU checks in one run (< 8 minutes on one H100/H200): the CUDA tests, then the GPU benchmark table.
# Usage: bench/gpu.sh            (uses .venv/bin/python, or $PY)
# Prints: pytest's summary for the tests marked `cuda`, then one Markdown table: ResNet-50 and MobileNetV2,
# fp32 and bf16, ImageNet-sized and 12 MP JPEGs, decoders pil / scaled / device, featx vs bare forward.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export FEATX_OFFLINE=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
"$PY" -m pytest -q -m cuda $(grep -l "mark.cuda" tests/*.py) -p no:cacheprovider
timeout 420 "$PY" bench/bench_camera.py --device cuda --precisions fp32,bf16 --backbones resnet50,mobilenet_v2 \
  --decoders pil,scaled,device --sets "ImageNet-sized,camera 12 MP" --camera-images 64 --small-images 512 \
  --batch 64 --out bench/results/gpu.json
