#!/usr/bin/env bash
# The GPU check of issue 19: everything in one call on a lent NVIDIA H200, at most 8 minutes.
#
# First, here (PyPI reachable): bash scripts/gpu_wheels.sh   (.whl/ and .official/, ignored)
# Then the device tool's call, from the repository root:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl", ".official"], timeout_s=540)
# On any CPU, at toy sizes (tiny model, no wheels, no nvidia-smi; $OUT a new temporary folder
# when unset): bash scripts/gpu_check.sh --dry-run   (tests/test_gpu_check.py runs it)
#
# Stages, each under a time budget (its steps stop when it is spent; the next stage runs
# whatever happened), each step's figures printed and merged into $OUT/summary.json at once:
#   a. setup (30 s): the carried wheels, nvidia-smi, torch and the device;
#   b. correctness (150 s): pytest on the precision and GPU tests; `mvfa-lite train`, few-shot
#      on chestxray_synthlesion, random weights: the tiny model in fp32, bf16 and fp16 and
#      ViT-L-14-336 in bf16 and fp16 on the GPU (losses finite and falling), the tiny fp32
#      run again on the CPU, and each GPU run's scores against the CPU's (Pearson, |dAUROC|);
#   c. speed (130 s): `mvfa-lite bench` of ViT-L-14-336 at 240 px: bf16 at batch 1 and 256,
#      fp16 at 256, bf16 at 256 under torch.compile; training step at batch 32 (peak memory);
#      then, where time is left, scripts/bench_compile.py: a batch-1 training pass, compiled;
#   d. the official code beside ours (170 s): `compare-official --device cuda` (training and
#      speed: one epoch at batch 1 in each program), a timed `mvfa-lite train --protocol
#      corrected` (3 epochs, batch 16) on the same staged data, and the PROJECTION of all
#      three to 50 epochs and 3,715 test images from the per-epoch and per-image seconds.
# $OUT after it (4 files): summary.json, gpu_check.log, bench-h200.json (every bench JSON, for
# book/), compare-official-h200.json. scripts/gpu_check.py reads each step's outputs.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") DRY=0 ;;
    *) echo "usage: bash scripts/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
OUT=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
PY=$(command -v "${PYTHON:-python3}")
SUMMARY=$OUT/summary.json
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
TEE=$!
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1

# dry run: every stage on the CPU, the tiny model, toy sizes, fewer precisions and batches (each
# process takes seconds to start), no torch.compile (inductor's CPU build takes minutes), and
# budgets 4x longer (a 2-core CPU, not an H200), one thread per process (at these sizes
# threads cost more than they save, the more so beside other jobs)
if (( DRY )); then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    DEV=cpu BIG=tiny-random SIZE=56 EPOCHS=2 SHOTS=1 BATCHES=(4) TRAIN_BATCH=4 SCALE=4
    TINY_PRECISIONS=(fp32 bf16) BIG_PRECISIONS=(bf16) COMPILE=0
    BENCH_SIZES=(--test-images 4 --zero-shot-images 4 --repeats 1 --shots 1)
    TESTS=(tests/test_precision.py::test_autocast_and_scaler_follow_the_precision
           tests/test_metrics.py::test_pixel_metrics_on_the_gpu_equal_the_cpu)
    OFFICIAL=tests/official_standin OFFICIAL_PY=$PY
    COMPARE_DATA=(--segmentation-data chestxray_synthlesion --classification-data
                  chestxray_synthlesion --split valid)
    CLIP=(--pretrained random)
else
    DEV=cuda BIG=ViT-L-14-336 SIZE=240 EPOCHS=5 SHOTS=4 BATCHES=(1 256) TRAIN_BATCH=32 SCALE=1
    TINY_PRECISIONS=(fp32 bf16 fp16) BIG_PRECISIONS=(bf16 fp16) COMPILE=1
    BENCH_SIZES=(--repeats 10)
    TESTS=(tests/test_precision.py tests/test_metrics.py::test_pixel_metrics_on_the_gpu_equal_the_cpu)
    OFFICIAL=.official OFFICIAL_PY=$WORK/official-python
    COMPARE_DATA=()
    CLIP=(--clip-checkpoint "$WORK/compare/clip-random.pt")
fi
BEST=${BATCHES[-1]}

figures() { "$PY" scripts/gpu_check.py "$SUMMARY" "$@" || echo "gpu_check.py $1: failed"; }

stage() {    # NAME BUDGET_S: the steps that follow share BUDGET_S seconds
    STAGE_END=$((SECONDS + $2 * SCALE))
    echo "=== stage $1 (budget $(($2 * SCALE)) s) at $SECONDS s"
}

run_step() {     # NAME BUDGET_S COMMAND...: under min(budget, what the stage has left)
    local name=$1 budget=$(($2 * SCALE)) left=$((STAGE_END - SECONDS)) start rc
    shift 2
    if (( left < 5 )); then
        figures step "$name" skipped 0
        return 1
    fi
    echo "--- $name (at most $(( budget < left ? budget : left )) s): $*"
    start=$(date +%s%N)
    timeout -k 5 $(( budget < left ? budget : left )) "$@"
    rc=$?
    STEP_SECONDS=$(( ($(date +%s%N) - start) / 1000000 ))e-3     # milliseconds, as seconds
    figures step "$name" $rc "$STEP_SECONDS"
    return $rc
}

train() {    # LABEL DEVICE MODEL PRECISION BUDGET_S
    run_step "train-$1" "$5" "$PY" -m mvfa_lite train chestxray_synthlesion --preset fast-cpu \
        --model "$3" --pretrained random --device "$2" --precision "$4" --epochs $EPOCHS \
        --shots $SHOTS --image-size $SIZE --out "$WORK/train/$1" \
        && figures train "$1" "$WORK/train/$1"
}

bench() {    # LABEL BUDGET_S BENCH-OPTIONS...
    local label=$1 budget=$2
    shift 2
    run_step "bench-$label" "$budget" "$PY" -m mvfa_lite bench --model $BIG --image-size $SIZE \
        --device $DEV --quick --train-batch $TRAIN_BATCH "${BENCH_SIZES[@]}" \
        --out "$WORK/bench-$label.json" "$@" \
        && figures bench "$label" "$WORK/bench-$label.json" "$OUT/bench-h200.json"
}

stage a-setup 30
if (( ! DRY )); then
    install="$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade"
    run_step install 20 $install --target /tmp/site .whl/*.whl
    run_step install-official 20 $install --target /tmp/official-site .whl/official/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/site
    printf '#!/bin/sh\nPYTHONPATH=/tmp/official-site:$PYTHONPATH exec %s "$@"\n' "$PY" \
        > "$OFFICIAL_PY"
    chmod +x "$OFFICIAL_PY"
    nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
fi
figures environment "$WORK/nvidia-smi.txt"

stage b-correctness 150
run_step pytest 60 "$PY" -m pytest -q -o addopts= -p no:cacheprovider \
    --junitxml="$WORK/pytest.xml" "${TESTS[@]}"
[[ -f $WORK/pytest.xml ]] && figures pytest "$WORK/pytest.xml"
for precision in "${TINY_PRECISIONS[@]}"; do
    train gpu-tiny-$precision $DEV tiny-random $precision 30
done
for precision in "${BIG_PRECISIONS[@]}"; do
    train gpu-vitl-$precision $DEV $BIG $precision 45
done
train cpu-tiny-fp32 cpu tiny-random fp32 40
runs=()
for precision in "${TINY_PRECISIONS[@]}"; do
    [[ -f $WORK/train/gpu-tiny-$precision/scores.csv ]] && runs+=("$WORK/train/gpu-tiny-$precision")
done
[[ -f $WORK/train/cpu-tiny-fp32/scores.csv && ${#runs[@]} -gt 0 ]] \
    && figures agreement "$WORK/train/cpu-tiny-fp32" "${runs[@]}"

stage c-speed 130
for batch in "${BATCHES[@]}"; do
    bench bf16-b$batch 25 --precision bf16 --batch-size $batch
done
bench fp16-b$BEST 25 --precision fp16 --batch-size $BEST
(( COMPILE )) && bench bf16-b$BEST-compile 130 --precision bf16 --batch-size $BEST --compile
(( COMPILE )) && run_step compile-b1 90 "$PY" scripts/bench_compile.py --device cuda \
    --model $BIG --image-size $SIZE --precision bf16     # a paper-protocol step, compiled

stage d-official 170
run_step compare-official 150 "$PY" -m mvfa_lite compare-official "$OFFICIAL" \
    --official-python "$OFFICIAL_PY" --model $BIG --shots $SHOTS --parts training speed \
    --device $DEV --speed-precision auto --work-dir "$WORK/compare" "${COMPARE_DATA[@]}" \
    --out "$OUT/compare-official-h200.json"
staged=$WORK/compare/code
[[ -d $staged/data/Brain_AD ]] && run_step train-corrected 60 "$PY" -m cProfile \
    -o "$WORK/corrected.prof" -m mvfa_lite train "$staged/data/Brain_AD" \
    --support-split valid --test-split test --shots $SHOTS \
    --seed-file "$staged/dataset/fewshot_seed/Brain/$SHOTS-shot.txt" --epochs 3 \
    --protocol corrected --device $DEV --model $BIG "${CLIP[@]}" --out "$WORK/corrected" \
    && [[ -f $OUT/compare-official-h200.json ]] \
    && figures official "$OUT/compare-official-h200.json" "$WORK/corrected" \
        "$WORK/corrected.prof" "$STEP_SECONDS"

echo "=== done at $SECONDS s: $SUMMARY"
rm -rf "$WORK"
exec >&- 2>&-
wait "$TEE"       # the log complete before $OUT is read
