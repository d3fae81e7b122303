#!/usr/bin/env bash
# Issue 24's "what to show": TensorBoard serving two finished tiny runs, photographed by headless
# Chromium (Debian's `chromium` package) as a user would open it. Writes OUT/timeseries.png and
# OUT/images.png; look at them (they are not committed: images are not kept in the repository).
#
#     PATH=.venv/bin:$PATH benchmarks/tensorboard_screenshot.sh [OUT]   # default /tmp/vggnet-tensorboard
set -euo pipefail
OUT=${1:-/tmp/vggnet-tensorboard}
PYTHON=${PYTHON:-python3}
VGGNET=${VGGNET:-vggnet}
rm -rf "$OUT" && mkdir -p "$OUT"
cd "$OUT"
$PYTHON - <<'PY'
import torch
from pathlib import Path
from torchvision.io import encode_jpeg
g = torch.Generator().manual_seed(3)     # 4 classes: class k is a bright band at row k (as the tests' folders)
for split in ("train", "test"):
    for k in range(4):
        d = Path("bands") / split / f"class{k}"
        d.mkdir(parents=True)
        for i in range(40):
            img = (torch.rand(3, 32, 32, generator=g) * 60).to(torch.uint8)
            img[:, k * 8:(k + 1) * 8, :] += 180
            (d / f"{i:04d}.jpg").write_bytes(encode_jpeg(img, quality=95).numpy().tobytes())
PY
for e in 6 1; do
  $VGGNET train --config vgg11_bn --data bands --width 0.0625 --epochs $e --batch-size 16 --lr 0.05 --init glorot \
    --val-size 16 --log-every 2 --out "runs/vgg11_bn-bands-${e}epochs" --threads 1 > "train-$e.log"
done
tensorboard --logdir runs --port 6006 > tensorboard.log 2>&1 &
trap 'kill $!' EXIT
sleep 8
for view in timeseries images; do
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,1000 \
    --virtual-time-budget=15000 --screenshot="$OUT/$view.png" "http://localhost:6006/#$view" 2> /dev/null
done
ls -la "$OUT"/*.png
