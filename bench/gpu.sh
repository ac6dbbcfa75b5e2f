#!/usr/bin/env bash
# The GPU checks in one run (about 5 minutes on one H100/H200, 8 at most): the CUDA tests, then steady-state tables.
# Usage: bench/gpu.sh            (uses .venv/bin/python, or $PY)
# Prints: pytest's summary for the tests marked `cuda`; one Markdown table (bench/bench_camera.py): ResNet-50 bf16
# and MobileNetV2 fp32 over 5,120 ImageNet-sized JPEGs and 512 camera photos (12 MP) per row with the pil, scaled
# and device decoders, and 5,120 items of the default pipeline's data in memory; featx end to end against the bare
# forward and against the decode limit (host cores, or the device's own for --decoder device), each row's warm-up
# reported apart; then featx's feeder against DataLoader(num_workers=cores) (bench/bench_feeder.py).
# Photos: 32 distinct ones per set (bench/photos.py), the rest copies, so the data is made in under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export FEATX_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
"$PY" -m pytest -q -m cuda $(grep -l "mark.cuda" tests/*.py) -p no:cacheprovider
timeout 330 "$PY" bench/bench_camera.py --device cuda --pairs resnet50:bf16,mobilenet_v2:fp32 \
  --decoders pil,scaled,device --sets "ImageNet-sized,camera 12 MP,Fashion-MNIST (in memory)" \
  --camera-images 512 --small-images 5120 --distinct 32 --batch 64 --out bench/results/gpu.json
timeout 120 "$PY" bench/bench_feeder.py --device cuda --images 5120 --distinct 32 --batch 64 --rounds 2 \
  --out bench/results/gpu-feeder.json
