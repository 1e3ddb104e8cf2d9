#!/usr/bin/env bash
# gpu_check.sh: the GPU checks (CUDA graphs), in one go, most important first.
#
#   benchmarks/gpu_check.sh --prepare         # copy its inputs into gpu-inputs/ (for a machine with the working tree only)
#   benchmarks/gpu_check.sh OUTDIR            # on one GPU: at most 8 minutes (each step under its own timeout)
#   benchmarks/gpu_check.sh --cpu OUTDIR      # the same steps, tiny sizes, on the CPU (tests/test_gpu_check.py)
#
# Run from anywhere; it works in the repository root. Every step writes its log into a scratch folder
# as it goes (NN_name.log), and after each step OUTDIR/gpu_check_logs.tar.gz is rewritten with all the
# logs so far, so a run cut short still leaves what it did; the last lines print a short table
# (benchmarks/gpu_check.py summary), also written to OUTDIR/summary.txt. OUTDIR gets these two files
# only (a lent GPU machine brings back at most 8). Steps:
#   00 env; 01 the CUDA kernel tests (Triton forget-mult, split softmax); 02 the CUDA graph tests
#   (apart, so that one failing cannot hide the other); 03 correctness: CPU vs CUDA and eager vs graphs;
#   04/05 a real main.py epoch of the 2018 PTB recipe, eager, then --cuda-graphs (2 epochs: the first
#   includes the captures); 06 the original 2018 code's epoch on the same card (for the ratio);
#   07 benchmark.py ptb-2018, wt2, ptb-qrnn x eager, graphs, amp-bf16; 08 benchmark.py --profile
#   (GPU kernel time per step vs wall time per step).
# Inputs, first found wins:
#   AWD_DATA_MIRROR     folder with penn/ and wikitext-2/; else gpu-inputs/data; else ../shared/data beside
#                       the repository; laid out into data/ with getdata.sh --mirror when data/ lacks them
#   AWD_LSTM_ORIGINAL   the original awd-lstm-lm code; else gpu-inputs/awd-lstm-lm; else
#                       ../shared/original/awd-lstm-lm; copied to a temporary folder and patched as
#                       tests/test_parity.py does (its ORIGINAL_FIXES)
#   PYTHON              the interpreter (default python3)
# --prepare copies penn/ and wikitext-2/ of the mirror and the original code (from the two variables
# above, or ../shared) into gpu-inputs/ (git-ignored, under 48 MiB), which travels as a carried folder.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
INPUTS=$REPO/gpu-inputs
INPUTS_LIMIT_KB=$((48 * 1024))

prepare() {  # gpu-inputs/ from the mirror and the original code beside the repository (or the variables)
    local mirror=${AWD_DATA_MIRROR:-$REPO/../shared/data}
    local original=${AWD_LSTM_ORIGINAL:-$REPO/../shared/original/awd-lstm-lm}
    local name split
    for name in penn wikitext-2; do
        for split in train valid test; do
            if [ ! -f "$mirror/$name/$split.txt" ]; then
                echo "error: --prepare: $mirror/$name/$split.txt not found (set AWD_DATA_MIRROR to a folder with penn/ and wikitext-2/)" >&2
                return 2
            fi
        done
    done
    if [ ! -f "$original/main.py" ]; then
        echo "error: --prepare: the original awd-lstm-lm code is not at $original (set AWD_LSTM_ORIGINAL to a checkout of salesforce/awd-lstm-lm)" >&2
        return 2
    fi
    local stage=$INPUTS.partial
    rm -rf "$stage" && mkdir -p "$stage/data" || return 1
    cp -r "$mirror/penn" "$mirror/wikitext-2" "$stage/data/" && cp -r "$original" "$stage/awd-lstm-lm" || return 1
    rm -rf "$stage/awd-lstm-lm/.git" "$stage/awd-lstm-lm/data"
    chmod -R u+w "$stage"  # the mirror's files are read-only; gpu-inputs/ must stay removable
    local kb
    kb=$(du -sk "$stage" | cut -f1)
    if [ "$kb" -gt "$INPUTS_LIMIT_KB" ]; then
        rm -rf "$stage"
        echo "error: --prepare: the inputs take ${kb} KiB, over the ${INPUTS_LIMIT_KB} KiB a carried folder may use" >&2
        return 2
    fi
    rm -rf "$INPUTS" && mv "$stage" "$INPUTS" || return 1
    echo "gpu-inputs/: penn and wikitext-2 from $mirror, the original code from $original; $((kb / 1024)) MiB ($kb KiB)"
}

if [ "${1:-}" = "--prepare" ]; then
    if [ $# -ne 1 ]; then echo "usage: $0 --prepare" >&2; exit 2; fi
    prepare
    exit $?
fi
CPU=0
if [ "${1:-}" = "--cpu" ]; then CPU=1; shift; fi
if [ $# -ne 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 --prepare | $0 [--cpu] OUTDIR" >&2
    exit 2
fi
OUT=$1
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
# The input variables are read in the repository root: a relative path is made absolute first, as the
# caller meant it (--prepare reads them where it was started, too).
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
[ -n "${AWD_DATA_MIRROR:-}" ] && AWD_DATA_MIRROR=$(absolute "$AWD_DATA_MIRROR")
[ -n "${AWD_LSTM_ORIGINAL:-}" ] && AWD_LSTM_ORIGINAL=$(absolute "$AWD_LSTM_ORIGINAL")
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
first_dir() {  # the first of its arguments that holds the file named by the first argument
    local file=$1; shift
    for d in "$@"; do [ -e "$d/$file" ] && { echo "$d"; return; }; done
    echo "${@: -1}"
}
MIRROR=${AWD_DATA_MIRROR:-$(first_dir penn/train.txt "$INPUTS/data" "$REPO/../shared/data")}
export AWD_LSTM_ORIGINAL=${AWD_LSTM_ORIGINAL:-$(first_dir main.py "$INPUTS/awd-lstm-lm" "$REPO/../shared/original/awd-lstm-lm")}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
LOGS=$SCRATCH/logs
mkdir -p "$LOGS"
ARCHIVE=$OUT/gpu_check_logs.tar.gz
BUDGET=470  # seconds for all steps (8 minutes less the summary); a step gets min(its limit, what is left)

archive() {  # OUT/gpu_check_logs.tar.gz: every log so far (replaced whole, so never half written)
    tar -czf "$ARCHIVE.partial" -C "$SCRATCH" logs && mv "$ARCHIVE.partial" "$ARCHIVE"
}

step() {  # step NAME LIMIT_S COMMAND...: run COMMAND in the repository root, logging to LOGS/NAME.log
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 10 ]; then
        echo "skipped: the time budget of ${BUDGET}s is spent" > "$LOGS/$name.log"
        echo "--- $name: skipped (budget spent)"
        archive
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "--- $name (limit ${limit}s) [$(date -u +%H:%M:%S)]"
    {
        echo "=== $name [$(date -u +%H:%M:%S)]: $*"
        local t0=$SECONDS
        timeout -k 5 "$limit" "$@"
        local rc=$?
        echo "--- rc=$rc wall=$((SECONDS - t0))s$([ $rc -eq 124 ] && echo ' (timed out)')"
    } > "$LOGS/$name.log" 2>&1
    tail -n 3 "$LOGS/$name.log" | sed 's/^/    /'
    archive
}

if [ $CPU -eq 1 ]; then
    echo "gpu_check --cpu: tiny sizes on the CPU; steps that need CUDA say so in their logs"
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    DEVICE=(--cpu)
    # A small slice of PTB (or a synthetic corpus when the mirror is absent) keeps each epoch in seconds.
    DATA=$SCRATCH/ptb-slice
    mkdir -p "$DATA"
    if [ -f "$MIRROR/penn/train.txt" ]; then
        head -n 300 "$MIRROR/penn/train.txt" > "$DATA/train.txt"
        head -n 60 "$MIRROR/penn/valid.txt" > "$DATA/valid.txt"
        head -n 60 "$MIRROR/penn/test.txt" > "$DATA/test.txt"
    else
        for split in train valid test; do
            for i in $(seq 1 $([ $split = train ] && echo 300 || echo 60)); do
                echo " the cat sees a dog $((i % 7)) and the bird eats $((i % 5)) fish ."
            done > "$DATA/$split.txt"
        done
    fi
    SIZE=(--emsize 16 --nhid 24 --bptt 10 --batch_size 4 --log-interval 20)
    # The PTB slice for every recipe (wt2's included): the mechanics on real text, not the recipes' corpora.
    BENCH=(--small --cpu --data "$DATA" --batch-size 4 --batches 2 --warmup 1 --val-batches 1 --threads 1)
    BF16=()  # bf16 autocast of the CPU's (oneDNN) LSTM is not what --bf16 runs, and fails on some CPUs
    echo "note: amp-bf16 is left out of the benchmark on the CPU (main.py --bf16 is CUDA only)"
    PROFILE=(--profile-steps 1)
else
    DEVICE=()
    DATA=$REPO/data/penn
    SIZE=()
    BENCH=(--batches 100 --warmup 150 --val-batches 20)
    BF16=(amp-bf16)
    PROFILE=(--profile-steps 5)
fi

step 00_env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 \
    || echo 'nvidia-smi: not available'; $PY -c 'import torch, sys; print(\"python\", sys.version.split()[0], \"torch\", \
torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version(), \"gpu\", \
torch.cuda.get_device_name() if torch.cuda.is_available() else None)'; nproc"

# Data: lay out PTB and WikiText-2 from the mirror when data/ lacks them (the GPU machine gets the
# working tree only).
if [ $CPU -eq 0 ]; then
    for name in penn wikitext-2; do
        if [ ! -f "data/$name/train.txt" ]; then
            step "00_data_$name" 60 ./getdata.sh --mirror "$MIRROR" "$name"
        fi
    done
fi

# 01: the CUDA kernel tests (Triton forget-mult, split softmax), apart from and before the graph tests,
# so that a failure or a crash in either cannot hide the other's answer.
step 01_kernel_tests 60 "$PY" -m pytest -q -s -rs tests/test_qrnn.py::test_triton_kernel_cuda \
    tests/test_splitcross.py::test_cuda_matches_cpu

# 02: the CUDA graph tests: captures after an lr change (in a new pool), then graphs vs eager over ~200
# steps with dropout.
step 02_graph_tests 100 "$PY" -m pytest -q -s -rs \
    "tests/test_cuda_graphs.py::test_capture_count_grows_after_an_lr_change_in_a_new_pool[cuda]" \
    tests/test_cuda_graphs.py::test_graphs_match_eager_on_cuda

# 03: CPU vs CUDA, eager vs graphs, at the PTB size (tiny with --cpu).
step 03_correctness 60 "$PY" benchmarks/gpu_check.py correctness $([ $CPU -eq 1 ] && echo --cpu)

# 04/05: main.py, the 2018 PTB recipe (recipes.py), one epoch eager; two with --cuda-graphs.
RECIPE=(--batch_size 20 --data "$DATA" --dropouti 0.4 --dropouth 0.25 --seed 141)
step 04_main_eager 60 "$PY" main.py "${RECIPE[@]}" "${SIZE[@]}" "${DEVICE[@]}" --epochs 1 --log-interval 50 --save "$SCRATCH/eager.pt"
if [ $CPU -eq 1 ]; then
    # --cuda-graphs is refused on the CPU (one line, status 2): that is what this step shows here.
    step 05_main_graphs 30 "$PY" main.py "${RECIPE[@]}" "${SIZE[@]}" "${DEVICE[@]}" --epochs 2 --log-interval 50 --save "$SCRATCH/graphs.pt" --cuda-graphs
else
    step 05_main_graphs 80 "$PY" main.py "${RECIPE[@]}" --epochs 2 --log-interval 50 --save "$SCRATCH/graphs.pt" --cuda-graphs
fi

# 06: the original 2018 code, patched as tests/test_parity.py patches it, one epoch of the same recipe.
# Its --cuda flag turns CUDA *off* (store_false), so it is passed on the CPU only.
ORIG=$SCRATCH/original
step 06_original 60 bash -c "$PY benchmarks/gpu_check.py original '$ORIG' && cd '$ORIG' && $PY main.py \
    ${RECIPE[*]} $([ $CPU -eq 1 ] && echo "${SIZE[*]} --cuda") --epochs 1 --save '$SCRATCH/orig.pt'"

# 07: benchmark.py, three recipes x eager / graphs / bf16 (warm-up long enough for most lengths' graphs).
step 07_bench 110 "$PY" benchmark.py --recipe ptb-2018 wt2 ptb-qrnn --options eager graphs "${BF16[@]}" "${BENCH[@]}" \
    --json "$LOGS/07_bench.jsonl"

# 08: where the step's time goes: GPU kernel time per step against wall time per step.
step 08_profile 45 "$PY" benchmark.py --recipe ptb-2018 --options eager graphs "${BENCH[@]}" --profile "${PROFILE[@]}"

"$PY" benchmarks/gpu_check.py summary $([ $CPU -eq 1 ] && echo --cpu) "$LOGS" > "$LOGS/summary.txt" 2>&1
cp "$LOGS/summary.txt" "$OUT/summary.txt"
archive
cat "$OUT/summary.txt"
