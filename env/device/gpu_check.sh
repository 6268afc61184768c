#!/usr/bin/env bash
# The library's GPU check (issue 2), in one device call from the repo root:
#   the QQP recipe (full-size model, bf16 autocast, ZeRO-2) on 1 GPU, stopped and resumed,
#   then on 2 GPUs under torchrun, then one checkpoint sampled on one GPU (T = 2000), then
#   diffusion.bench on 1 and 2 GPUs (BENCH=0 skips it).
# Needs .device/wheels (deepspeed and what the device image lacks) and .device/data (QQP jsonl,
# train as .xz), both carried (set-up: env/device/device_setup.sh). Writes logs and figures under $OUT.
set -euo pipefail
source env/device/device_setup.sh
python3 -c "import torch, deepspeed, datasets, nltk; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, torch.cuda.get_device_name(0))"
W=/tmp/w; mkdir -p $W
STEPS1=${STEPS1:-40}; STEPS2=${STEPS2:-80}; STEPS_2GPU=${STEPS_2GPU:-60}
cat > $W/qqp.yaml <<YAML
data: {train: .device/data/train.jsonl, valid: .device/data/valid.jsonl}
train: {save_every: $STEPS1, log_every: 10, zero_stage: 2}
YAML
python3 -c "from diffusion.prepare import prepare; from diffusion.config import load_config; print(prepare(load_config('$W/qqp.yaml').data, '$W/data'))"
run one_gpu_part1 600 env CUDA_VISIBLE_DEVICES=0 python3 -m diffusion.train $W/qqp.yaml $W/one --data-dir $W/data --stop-after $STEPS1
run one_gpu_resume 600 env CUDA_VISIBLE_DEVICES=0 python3 -m diffusion.train $W/qqp.yaml $W/one --data-dir $W/data --stop-after $STEPS2
cp $W/one/train_log.jsonl "$OUT/one_gpu_train_log.jsonl"
if [ "$NGPU" -ge 2 ]; then
  run two_gpu 600 torchrun --standalone --nproc_per_node 2 -m diffusion.train $W/qqp.yaml $W/two --data-dir $W/data --stop-after $STEPS_2GPU
  cp $W/two/train_log.jsonl "$OUT/two_gpu_train_log.jsonl"
fi
run sample 600 env CUDA_VISIBLE_DEVICES=0 python3 -m diffusion.sample $W/one/checkpoints/step_$(printf %07d $STEPS2) \
  .device/data/valid.jsonl "$OUT/samples.jsonl" --set sample.max_examples=${SAMPLES:-512} --set sample.batch_size=${SAMPLES:-512}
du -sh $W/one/checkpoints/* | tee -a "$OUT/checkpoints.txt"
# throughput (issue 5): one JSON line each, in $OUT/results.jsonl
if [ "${BENCH:-1}" = 1 ]; then
  run bench_1gpu 600 env CUDA_VISIBLE_DEVICES=0 python3 -m diffusion.bench
  [ "$NGPU" -ge 2 ] && run bench_2gpu 600 torchrun --standalone --nproc_per_node 2 -m diffusion.bench --skip-sample
fi
