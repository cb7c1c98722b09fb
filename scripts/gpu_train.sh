#!/usr/bin/env bash
# Train on a lent GPU in one call: continue the shipped model, or compare DiVeQ and SF-DiVeQ.
#
# Usage: scripts/gpu_train.sh DATA_DIR OUT_DIR TIME_BUDGET_S [zoo|compare] [DEVICE]
#   e.g. PYTHONUNBUFFERED=1 scripts/gpu_train.sh .data/trainpack "$OUT" 480 zoo
#
#   zoo      fine-tunes weights/diveq-rvq12-c128-rb2-ft1-ix2.safetensors with its own loss
#            (log-mse) at a low lr (7e-5: the model is already trained); alone, since one run
#            fills an H100 (two side by side: 711 crops/s together; one alone: 670–712)
#   compare  DiVeQ (one codebook of 256) and SF-DiVeQ (256 codewords), both from scratch,
#            side by side under the same budget
# Each run leaves OUT_DIR/<run>.tar (model.pt without optimiser, train_log.jsonl, console.log).
# Then, here: python -m diveq_codec.codec.release.export <run>/model.pt --name NAME --model-id N
# --data DATA_DIR ..., and diveq-codec eval (README). The weights card records each shipped run.
set -euo pipefail
data=$1 out=$2 budget=$3 mode=${4:-zoo} device=${5:-cuda}
work=$(mktemp -d)
common=(--data "$data" --device "$device" --time-budget "$budget" --checkpoint-every 120 --log-every 200
        --crop 256 --steps 1000000)
scratch=(--channels 128 --latent-dim 64 --lr 5e-4 --batch 16 --threads 4)

case $mode in
    zoo)
        runs=(zoo)
        python -m diveq_codec.models.train "${common[@]}" --out "$work/zoo" --init weights/diveq-rvq12-c128-rb2-ft1-ix2.safetensors \
            --loss log-mse --lr 7e-5 --batch 32 --threads 8 > "$work/zoo.log" 2>&1 &
        ;;
    compare)
        runs=(diveq1 sfdiveq1)
        python -m diveq_codec.models.train "${common[@]}" "${scratch[@]}" --out "$work/diveq1" --quantizer diveq --stages 1 \
            --codes 256 > "$work/diveq1.log" 2>&1 &
        python -m diveq_codec.models.train "${common[@]}" "${scratch[@]}" --out "$work/sfdiveq1" --quantizer sf-diveq \
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
