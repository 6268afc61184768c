#!/usr/bin/env bash
# The library's GPU check (issue 2), in one device call from the repo root:
#   the QQP recipe (full-size model, bf16 autocast, ZeRO-2) on 1 GPU, stopped and resumed,
#   then on 2 GPUs under torchrun, then one checkpoint sampled on one GPU (T = 2000), then
#   diffusion.bench on 1 and 2 GPUs (BENCH=0 skips it).
# Needs .device/wheels (deepspeed and what the device image lacks) and .device/data (QQP jsonl),
# both carried. Writes logs and figures under $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")
python3 -c "import torch, deepspeed, datasets, nltk; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
W=/tmp/w; mkdir -p $W
STEPS1=${STEPS1:-40}; STEPS2=${STEPS2:-80}; STEPS_2GPU=${STEPS_2GPU:-60}
cat > $W/qqp.yaml <<YAML
data: {train: .device/data/train.jsonl, valid: .device/data/valid.jsonl}
train: {save_every: $STEPS1, log_every: 10, zero_stage: 2}
YAML
python3 -c "from diffusion.prepare import prepare; from diffusion.config import load_config; print(prepare(load_config('$W/qqp.yaml').data, '$W/data'))"
run() { local name=$1; shift; echo "== $name"; ( time "$@" ) 2>&1 | grep -v -i "warn\|return func" | tee -a "$OUT/$name.log"; }
run one_gpu_part1 env CUDA_VISIBLE_DEVICES=0 python3 -m diffusion.train $W/qqp.yaml $W/one --data-dir $W/data --stop-after $STEPS1
run one_gpu_resume env CUDA_VISIBLE_DEVICES=0 python3 -m diffusion.train $W/qqp.yaml $W/one --data-dir $W/data --stop-after $STEPS2
cp $W/one/train_log.jsonl "$OUT/one_gpu_train_log.jsonl"
if [ "$NGPU" -ge 2 ]; then
  run two_gpu torchrun --standalone --nproc_per_node 2 -m diffusion.train $W/qqp.yaml $W/two --data-dir $W/data --stop-after $STEPS_2GPU
  cp $W/two/train_log.jsonl "$OUT/two_gpu_train_log.jsonl"
fi
run sample env CUDA_VISIBLE_DEVICES=0 python3 -m diffusion.sample $W/one/checkpoints/step_$(printf %07d $STEPS2) \
  .device/data/valid.jsonl "$OUT/samples.jsonl" --max-examples ${SAMPLES:-512} --batch-size ${SAMPLES:-512}
du -sh $W/one/checkpoints/* | tee -a "$OUT/checkpoints.txt"
# throughput (issue 5): one JSON line each, appended to $OUT/bench.jsonl
if [ "${BENCH:-1}" = 1 ]; then
  run bench_1gpu env CUDA_VISIBLE_DEVICES=0 python3 -m diffusion.bench
  [ "$NGPU" -ge 2 ] && run bench_2gpu torchrun --standalone --nproc_per_node 2 -m diffusion.bench --skip-sample
  grep -h '^{' "$OUT"/bench_*.log >> "$OUT/bench.jsonl" || true
fi
