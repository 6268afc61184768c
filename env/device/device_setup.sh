# Sourced by the device scripts (gpu_check.sh, speed_check.sh, four_gpu_check.sh) from the repo
# root on the device machine: installs .device/wheels (pyarrow only where the image's is older
# than 24), unpacks .device/data, records the card, sets NGPU and defines
#   run NAME SECONDS COMMAND...   COMMAND under a time limit, its output in $OUT/NAME.log and
#                                 its JSON lines (tagged with NAME) appended to $OUT/results.jsonl
# and decode_last (below), which re-decodes a last checkpoint with the settings of DECODE
OUT=${OUT:-/tmp/$(basename "$0" .sh)}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" 2>/dev/null || NEED_ARROW=1
# once a machine: a second script in the same call finds them installed
[ -f /tmp/site/.installed ] || { python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  $(ls .device/wheels/*.whl | grep -v ${NEED_ARROW:+NONE}pyarrow) 2>&1 | tail -2 && touch /tmp/site/.installed; }
export PYTHONPATH=/tmp/site:$PWD
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
[ -f .device/data/train.jsonl ] || xz -dk .device/data/train.jsonl.xz
run() { local name=$1 limit=$2; shift 2; echo "== $name"; ( time timeout "$limit" "$@" ) > "$OUT/$name.log" 2>&1
        grep -h '^{"' "$OUT/$name.log" | sed "s/^{/{\"run\": \"$name\", /" >> "$OUT/results.jsonl" || true; tail -3 "$OUT/$name.log"; }
# the decoding ablations a last checkpoint is decoded again with (env/device/solver_matrix.py settings)
[ "${DECODE:-}" = default ] && unset DECODE  # DECODE=default: the list below, in every script
DECODE=${DECODE-"dpm200:steps=200 l2_rounding:rounding=l2 ddpm2000:solver=ddpm no_min_tokens:min_target_tokens=0"}
#   decode_last NAME TITLE SECONDS CHECKPOINTS   the last step_* in CHECKPOINTS decoded on the first N=200
#                                               valid pairs with the recipe's own settings, then each of
#                                               DECODE, ending with a markdown table under TITLE
decode_last() {
  local name=$1 title=$2 limit=$3 last; last=$(ls -d $4/step_* 2>/dev/null | tail -1)
  [ -n "$last" ] || return 0
  local settings=(--setting recipe:); for s in $DECODE; do settings+=(--setting "$s"); done
  run "decode_$name" $limit python3 env/device/solver_matrix.py "$last" .device/data/valid.jsonl \
    --pairs ${N:-200} --score ${N:-200} "${settings[@]}" --table "$title, $(basename $last), decoding"
}
