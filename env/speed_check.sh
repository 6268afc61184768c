#!/usr/bin/env bash
# Issue 5 follow-up, one device call on 1 GPU from the repo root: diffusion.bench at today's
# defaults, then with Inductor's autotuned GEMM templates (epilogues fused into the matmuls) for
# sampling and for training, then the real trainer (diffusion.train on QQP) for STEPS steps to
# compare its logged tokens/s with the benchmark's. Needs .device/wheels and .device/data (carried).
# Every result line is appended to $OUT as it comes, so a call cut short still returns figures.
set -uo pipefail
OUT=${OUT:-/tmp/speed_check}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" 2>/dev/null || NEED_ARROW=1
WHEELS=$(ls .device/wheels/*.whl | grep -v ${NEED_ARROW:+NONE}pyarrow)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $WHEELS 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
git log --oneline -1 > "$OUT/commit.txt" 2>/dev/null || true
[ -f .device/data/train.jsonl ] || xz -dk .device/data/train.jsonl.xz
run() { local name=$1 limit=$2; shift 2; echo "== $name"; ( time timeout "$limit" "$@" ) > "$OUT/$name.log" 2>&1
        grep -h '^{' "$OUT/$name.log" | sed "s/^{/{\"run\": \"$name\", /" >> "$OUT/bench.jsonl"; tail -3 "$OUT/$name.log"; }
AUTOTUNE='{"max_autotune": true, "coordinate_descent_tuning": true}'
run default 150 python3 -m diffusion.bench
run autotune_sample 170 python3 -m diffusion.bench --skip-train --inductor "$AUTOTUNE"
run autotune_train 200 python3 -m diffusion.bench --skip-sample --inductor "$AUTOTUNE"
W=/tmp/w; mkdir -p $W
printf 'data: {train: .device/data/train.jsonl, valid: .device/data/valid.jsonl}\ntrain: {log_every: 10, save_every: 100000}\n' > $W/qqp.yaml
python3 -c "from diffusion.prepare import prepare; from diffusion.config import load_config; print(prepare(load_config('$W/qqp.yaml').data, '$W/data'))"
run trainer ${TRAINER_S:-150} python3 -m diffusion.train $W/qqp.yaml $W/run --data-dir $W/data --stop-after ${STEPS:-200}
cp $W/run/train_log.jsonl "$OUT/trainer_log.jsonl" 2>/dev/null || true
