#!/usr/bin/env bash
# Issues 12 and 13, one device call on one GPU, from the repo root: the target budget recipe
# without self-conditioning at about the wall time the recipe with it takes (6,000 steps,
# checkpoints 3,000 and 6,000), with and without model.width_mask, trained side by side (the card
# shared: their step counts, not their speeds, are the comparison; quality_check.sh times a recipe
# alone). Each last checkpoint is then decoded on the first 200 valid pairs in several ways
# (solver steps, DDPM T = 2000, soft rounding at three temperatures): env/device/solver_matrix.py.
# Needs .device/wheels and .device/data (carried; env/device/device_setup.sh).
set -uo pipefail
source env/device/device_setup.sh
D=.device/data
head -200 $D/valid.jsonl > /tmp/first200.jsonl
COMMON=(--set data.train=$D/train.jsonl --set data.valid=$D/valid.jsonl)
NOSC=model.self_condition=false,train.steps=${STEPS:-6000},train.save_every=$((${STEPS:-6000} / 2))
run train ${TRAIN_S:-420} python3 env/device/ablation.py jobs/qqp_fast_target.yaml /tmp/abl "${COMMON[@]}" --parallel 2 \
  --variant "nosc:$NOSC" --variant "nosc_wm:$NOSC,model.width_mask=true" --timeout $((${TRAIN_S:-420} - 10))
for v in nosc nosc_wm; do cp /tmp/abl/$v/train_log.jsonl "$OUT/train_log_$v.jsonl" 2>/dev/null; done
decode() {
  local v=$1 ck
  ck=$(ls -d /tmp/abl/$v/checkpoints/step_* | tail -1)
  [ -n "$ck" ] || return
  run "decode_$v" ${DECODE_S:-100} python3 env/device/solver_matrix.py $ck /tmp/first200.jsonl --pairs 200 \
    --setting dpm50:solver=dpm++2m,steps=50 --setting dpm100:solver=dpm++2m,steps=100 \
    --setting dpm200:solver=dpm++2m,steps=200 \
    --setting soft1:solver=dpm++2m,steps=50,rounding=soft,soft_temperature=1.0 \
    --setting soft05:solver=dpm++2m,steps=50,rounding=soft,soft_temperature=0.5 \
    --setting soft02:solver=dpm++2m,steps=50,rounding=soft,soft_temperature=0.2 \
    --setting soft1_200:solver=dpm++2m,steps=200,rounding=soft,soft_temperature=1.0 \
    --setting ddpm2000:solver=ddpm,pairs=200 --dump "$OUT/decode_$v"
}
decode nosc & decode nosc_wm & wait
python3 -c "
import json, sys, pathlib
print('| checkpoint | setting | sent/s | BLEU | ROUGE-L | Dist-1 | len | BLEU vs source | empty |')
for log in sorted(pathlib.Path('$OUT').glob('decode_*.log')):
    for line in log.read_text().splitlines():
        if line.startswith('{\"setting'):
            r = json.loads(line)
            print(f\"| {log.stem[7:]} | {r['setting']} | {r['sentences_per_s']:.0f} | {r['bleu']:.4f} | {r['rouge_l']:.4f} | {r['dist1']:.4f} | {r['len']:.2f} | {r['self_bleu_src']:.4f} | {r['empty']:.3f} |\")
" | tee "$OUT/decode.md"
cp /tmp/abl/ablation.md /tmp/abl/ablation.jsonl "$OUT/" 2>/dev/null
# the device tool returns few files: everything but the two tables in one archive
(cd "$OUT" && tar czf all.tgz --exclude=all.tgz --exclude=decode.md --exclude=ablation.md . && \
  find . -mindepth 1 -not -name all.tgz -not -name decode.md -not -name ablation.md -delete)
cat "$OUT/ablation.md"
