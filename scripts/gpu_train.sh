#!/usr/bin/env bash
# One lent-GPU call: train the zoo model and the DiVeQ vs SF-DiVeQ comparison side by side.
# Usage: scripts/gpu_train.sh DATA_DIR OUT_DIR TIME_BUDGET_S [DEVICE]
# Each run leaves OUT_DIR/<run>/model.pt (weights, no optimiser) and train_log.jsonl: six files,
# within what a lent machine sends back; the console logs stay in /tmp there.
set -euo pipefail
data=$1 out=$2 budget=$3 device=${4:-cuda}
common=(--data "$data" --device "$device" --time-budget "$budget" --checkpoint-every 90 --log-every 200
        --channels 128 --latent-dim 64 --crop 256 --lr 1e-3 --threads 4 --steps 1000000)
python -m models.train "${common[@]}" --out "$out/rvq12" --quantizer diveq --stages 12 --codes 128 --batch 16 \
    > "/tmp/rvq12.log" 2>&1 &
python -m models.train "${common[@]}" --out "$out/diveq1" --quantizer diveq --stages 1 --codes 256 --batch 16 \
    > "/tmp/diveq1.log" 2>&1 &
python -m models.train "${common[@]}" --out "$out/sfdiveq1" --quantizer sf-diveq --codes 256 --batch 16 \
    > "/tmp/sfdiveq1.log" 2>&1 &
wait
for run in rvq12 diveq1 sfdiveq1; do rm -f "$out/$run/checkpoint.pt"; head -n 1 "/tmp/$run.log"; tail -n 3 "/tmp/$run.log"; done
