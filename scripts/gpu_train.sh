#!/usr/bin/env bash
# One lent-GPU call: continue the zoo model, or train DiVeQ and SF-DiVeQ under one budget
# at the zoo's architecture (issue 3's quantizer choice).
#
# Usage: scripts/gpu_train.sh DATA_DIR OUT_DIR TIME_BUDGET_S [zoo|compare] [DEVICE]
#   e.g. PYTHONUNBUFFERED=1 scripts/gpu_train.sh .data/trainpack "$OUT" 480 zoo
#
#   zoo      fine-tunes weights/diveq-rvq12-c128-rb2-ft1-c3.safetensors (12 × 128 residual DiVeQ, two
#            residual blocks per transform) with its own loss, log-mse, alone: one run fills the
#            GPU (two side by side moved 711 crops/s together, one alone 670–712). Its lr (7e-5)
#            restarts below the first chunk of model 6 (1e-4), as the model is already trained;
#            model 7 is this mode's run (540 s) plus 195 s at 3e-5 on the warm machine, and model 8
#            is model 7's network with coder 3's tables (see its card). Model 6 came from the "grow"
#            mode of commit d166c37 (model 5 + --residual-blocks 2)
#   compare  diveq1 (DiVeQ, one codebook of 256) and sfdiveq1 (SF-DiVeQ, 256 codewords, coded
#            as segment + 2-bit position), both from scratch, side by side
# Each run leaves OUT_DIR/<run>.tar (model.pt without optimiser + train_log.jsonl + console
# log), under the 16 MiB a lent machine sends back.
# Afterwards, here: python -m codec.export <run>/model.pt ..., then diveq-codec eval (README).
set -euo pipefail
data=$1 out=$2 budget=$3 mode=${4:-zoo} device=${5:-cuda}
work=$(mktemp -d)
common=(--data "$data" --device "$device" --time-budget "$budget" --checkpoint-every 120 --log-every 200
        --crop 256 --steps 1000000)
scratch=(--channels 128 --latent-dim 64 --lr 5e-4 --batch 16 --threads 4)

case $mode in
    zoo)
        runs=(zoo)
        python -m models.train "${common[@]}" --out "$work/zoo" --init weights/diveq-rvq12-c128-rb2-ft1-c3.safetensors \
            --loss log-mse --lr 7e-5 --batch 32 --threads 8 > "$work/zoo.log" 2>&1 &
        ;;
    compare)
        runs=(diveq1 sfdiveq1)
        python -m models.train "${common[@]}" "${scratch[@]}" --out "$work/diveq1" --quantizer diveq --stages 1 \
            --codes 256 > "$work/diveq1.log" 2>&1 &
        python -m models.train "${common[@]}" "${scratch[@]}" --out "$work/sfdiveq1" --quantizer sf-diveq \
            --codes 256 > "$work/sfdiveq1.log" 2>&1 &
        ;;
    *) echo "mode must be zoo or compare, got $mode" >&2; exit 2 ;;
esac
status=0
for _ in "${runs[@]}"; do
    wait -n || status=$?
done

for run in "${runs[@]}"; do
    cp "$work/$run.log" "$work/$run/console.log"
    rm -f "$work/$run/checkpoint.pt"
    tar -C "$work" -cf "$out/$run.tar" "$run"
    echo "== $run"; head -n 2 "$work/$run.log"; tail -n 2 "$work/$run.log"
done
exit "$status"
