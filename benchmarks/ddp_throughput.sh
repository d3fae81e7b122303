#!/usr/bin/env bash
# Training images/s of `vggnet train` with 1 process (2 threads) and with 2 torchrun
# processes (1 thread each) on this 2-core machine; same global batch, same data.
# Usage: bash benchmarks/ddp_throughput.sh [DATA]
set -euo pipefail
DATA=${1:-../shared/data/cifar10-jpeg}
OUT=$(mktemp -d)
ARGS=(--data "$DATA" --limit-train 7680 --limit-test 500 --val-size 0 --epochs 1 --batch-size 256)
vggnet train "${ARGS[@]}" --out "$OUT/one" --threads 2 > /dev/null
GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m vggnet train "${ARGS[@]}" \
    --out "$OUT/two" --threads 1 > /dev/null
for run in one two; do
    python -c "import json,sys; r=json.loads(open(sys.argv[1]).readline()); print(sys.argv[2], round(r['images_per_s'], 1), 'img/s')" \
        "$OUT/$run/metrics.jsonl" "$run"
done
