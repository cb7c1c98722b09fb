#!/usr/bin/env bash
# One lent-GPU call: continue the zoo model and, beside it, train DiVeQ and SF-DiVeQ under
# one budget at the zoo's architecture (issue 3's quantizer choice).
#
# Usage: scripts/gpu_train.sh DATA_DIR OUT_DIR TIME_BUDGET_S [DEVICE]
#   e.g. PYTHONUNBUFFERED=1 scripts/gpu_train.sh .data/trainpack "$OUT" 480
#
# Runs (concurrently; small models leave an H100 mostly idle, so three share it):
#   zoo      fine-tunes weights/diveq-rvq12-c128-ft2.safetensors (12 × 128 residual DiVeQ)
#   diveq1   DiVeQ, one codebook of 256, from scratch
#   sfdiveq1 SF-DiVeQ, 256 codewords, from scratch (coded as segment + 2-bit position)
# Each leaves OUT_DIR/<run>.tar (model.pt without optimiser + train_log.jsonl + console log):
# three files, each under the 16 MiB a lent machine sends back.
# Afterwards, here: python -m codec.export <run>/model.pt ..., then diveq-codec eval (README).
set -euo pipefail
data=$1 out=$2 budget=$3 device=${4:-cuda}
work=$(mktemp -d)
common=(--data "$data" --device "$device" --time-budget "$budget" --checkpoint-every 120 --log-every 200
        --crop 256 --batch 16 --steps 1000000 --threads 4)
scratch=(--channels 128 --latent-dim 64 --lr 5e-4)

python -m models.train "${common[@]}" --out "$work/zoo" --init weights/diveq-rvq12-c128-ft2.safetensors --lr 2e-4 --batch 32 \
    > "$work/zoo.log" 2>&1 &
python -m models.train "${common[@]}" "${scratch[@]}" --out "$work/diveq1" --quantizer diveq --stages 1 --codes 256 \
    > "$work/diveq1.log" 2>&1 &
python -m models.train "${common[@]}" "${scratch[@]}" --out "$work/sfdiveq1" --quantizer sf-diveq --codes 256 \
    > "$work/sfdiveq1.log" 2>&1 &
status=0
wait -n || status=$?
wait -n || status=$?
wait -n || status=$?

for run in zoo diveq1 sfdiveq1; do
    cp "$work/$run.log" "$work/$run/console.log"
    rm -f "$work/$run/checkpoint.pt"
    tar -C "$work" -cf "$out/$run.tar" "$run"
    echo "== $run"; head -n 2 "$work/$run.log"; tail -n 2 "$work/$run.log"
done
exit "$status"
