#!/usr/bin/env bash
# Issue 22's measurement: VGG-16-BN trained on CIFAR-10's six animal classes, then fitted to
# its four vehicle classes with 10, 100 and 1,000 training images per class: linear and full
# fine-tuning against training from scratch with the default recipe, tested on all 4,000
# vehicle test images. Then the 224 px feature pass on the ImageNet photographs.
#
#     benchmarks/finetune.sh [OUT]        # OUT: a scratch folder (default /tmp/vggnet-finetune)
#
# PRETRAINED=path skips the pretraining (a run folder or weights file of the animal classes).
set -euo pipefail
SHARED=${SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
OUT=${1:-/tmp/vggnet-finetune}
VGGNET=${VGGNET:-vggnet}
PYTHON=${PYTHON:-python3}     # one with torch and torchvision (the 224 px weights)
export VGGNET_CACHE=${VGGNET_CACHE:-$OUT/cache}
mkdir -p "$OUT/runs"

# the folders: symlinks into the shared CIFAR-10 copy (the first n training images of a class)
S=$SHARED/cifar10-jpeg
if [ ! -d "$OUT/animals" ]; then
  for split in train test; do mkdir -p "$OUT/animals/$split"
    for c in bird cat deer dog frog horse; do ln -s "$S/$split/$c" "$OUT/animals/$split/$c"; done; done
  for n in 10 100 1000; do for c in airplane automobile ship truck; do
    mkdir -p "$OUT/vehicles$n/train/$c" "$OUT/vehicles$n/test"
    mapfile -t files < <(ls "$S/train/$c" | sort)      # all of it read: no SIGPIPE under pipefail
    for f in "${files[@]:0:$n}"; do ln -s "$S/train/$c/$f" "$OUT/vehicles$n/train/$c/$f"; done
    ln -s "$S/test/$c" "$OUT/vehicles$n/test/$c"
  done; done
fi

PRE=${PRETRAINED:-$OUT/runs/animals-vgg16bn}
[ -e "$PRE" ] || $VGGNET train --data "$OUT/animals" --epochs 15 --out "$PRE"

timed() {   # name, command...: run it, keep its wall-clock seconds beside its results.json
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@" > "$OUT/runs/$name.log" 2>&1
  echo "$(date +%s.%N) - $t0" | bc > "$OUT/runs/$name/wall_s"
}
for n in 10 100 1000; do
  timed "linear$n" $VGGNET finetune --weights "$PRE" --data "$OUT/vehicles$n" --mode linear --out "$OUT/runs/linear$n"
  timed "full$n" $VGGNET finetune --weights "$PRE" --data "$OUT/vehicles$n" --out "$OUT/runs/full$n"
  timed "scratch$n" $VGGNET train --data "$OUT/vehicles$n" --out "$OUT/runs/scratch$n"
done
python3 - "$OUT/runs" <<'PY'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
print("| images per class | linear (fc7) | full fine-tuning | from scratch (fast recipe) |")
print("|---|---|---|---|")
for n in (10, 100, 1000):
    cells = []
    for kind in ("linear", "full", "scratch"):
        r = json.loads((runs / f"{kind}{n}" / "results.json").read_text())
        wall = float((runs / f"{kind}{n}" / "wall_s").read_text())
        cells.append(f"{100 * r['final_test_acc']:.2f} % ({r['epochs']} epochs, {wall / 60:.1f} min)")
    print(f"| {n} | " + " | ".join(cells) + " |")
PY

# 224 px: torchvision-layout VGG-16 weights (random: speed only), the linear mode's feature
# pass over the 100 ImageNet photographs split into two folders, and its head epochs
IMG=$OUT/imagenet2
if [ ! -d "$IMG" ]; then
  i=0; for f in $(ls "$SHARED/imagenet-sample" | sort); do
    cls=$([ $((i % 2)) -eq 0 ] && echo even || echo odd); split=$([ $((i % 10)) -lt 8 ] && echo train || echo test)
    mkdir -p "$IMG/$split/$cls"; ln -s "$SHARED/imagenet-sample/$f" "$IMG/$split/$cls/$f"; i=$((i + 1))
  done
fi
[ -e "$OUT/vgg16-random.safetensors" ] || {
  $PYTHON -c "import torch, torchvision; torch.save(torchvision.models.vgg16().state_dict(), '$OUT/vgg16-random.pth')"
  $VGGNET convert "$OUT/vgg16-random.pth" --out "$OUT/vgg16-random.safetensors"; }
rm -rf "$OUT/runs/imagenet-linear" "$OUT/cache-224"      # a cold feature cache: the pass is timed
VGGNET_CACHE=$OUT/cache-224 timed imagenet-linear $VGGNET finetune --weights "$OUT/vgg16-random.safetensors" --data "$IMG" --mode linear \
  --val-size 0 --out "$OUT/runs/imagenet-linear"
python3 - "$OUT/runs/imagenet-linear" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
r = json.loads((run / "results.json").read_text())
rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
print(f"224 px feature pass: 100 images in {r['feature_time_s']:.1f} s = {100 / r['feature_time_s']:.1f} img/s; "
      f"head: {sum(x['train_time_s'] for x in rows) / len(rows) * 1000:.1f} ms per epoch over {len(rows)} epochs")
PY
