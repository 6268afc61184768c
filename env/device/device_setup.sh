# The one bootstrap of a lent GPU machine (../.library/device), sourced from the repo root with
# the wheels of ../shared/device-wheels in .device/wheels and QQP's jsonl files (or .xz) in
# .device/data, both carried. It installs what the machine's image lacks (DeepSpeed, submitit,
# nltk, rouge-score, bert-score, datasets) into /tmp/site, records the card in $OUT/gpu.txt and
# defines DEVICE_SETS, what a study is submitted with there: the local executor in the foreground,
# the carried data, one GPU a stage, no BERTScore model (none can be fetched there). For example:
#   source env/device/device_setup.sh
#   python3 -m pipeline.cli submit jobs/qqp_fast_study.yaml "${DEVICE_SETS[@]}" --only target
#   python3 -m pipeline.cli results qqp-fast
#   python3 -m diffusion.bench train        (or sample, profile SPEC, attention)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# NVLink multicast off (../.library/device/KINDS.md); output as it comes, for a call cut short
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
[ -f /tmp/site/.installed ] || { python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  .device/wheels/*.whl 2>&1 | tail -2 && touch /tmp/site/.installed; }
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
for packed in .device/data/*.xz; do [ -f "$packed" ] && [ ! -f "${packed%.xz}" ] && xz -dk "$packed"; done
DEVICE_SETS=(--executor local --wait --set data.train=.device/data/train.jsonl --set data.valid=.device/data/valid.jsonl
             --set resources.train.gpus=1 --set resources.sample.gpus=1 --set evaluate.bertscore_model=null)
