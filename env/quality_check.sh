#!/usr/bin/env bash
# Issue 12 in one device call on one GPU, from the repo root: the budget recipe for both noising
# modes (jobs/qqp_fast_target.yaml, jobs/qqp_fast_full.yaml) through `pipeline submit --executor
# local --wait` as a user runs it, both at once on the card (520 s; on a card 6 % slower they
# had only written their last samples at 540 s: LIMIT_S is 580, inside the device's 600 s; side
# by side each one's logged speed is the shared card's: MODES=target times one spec alone, in
# 240-320 s; SEQUENTIAL=1 runs the MODES one after another, more than one exceeding a call;
# MODES=full_quiet runs jobs/qqp_fast_full_quiet.yaml), each checkpoint sampled on the first
# N=200 pairs of QQP's valid split (single sample, the recipe's solver), then the combined table
# (BLEU, ROUGE-L, Dist-1, len, BLEU against the source, empty outputs, the copy-the-source row),
# the checkpoint diagnostics, the training speed and the first outputs. diffusion/QUALITY.md
# holds what it printed. Needs .device/wheels and .device/data (carried; set-up:
# env/device/device_setup.sh). Extra `--set` values for every mode: SET="train.steps=100 ...".
# DECODE="NAME:field=value ..." (env/device/solver_matrix.py settings; DECODE=default: the list in
# device_setup.sh) also decodes each mode's last checkpoint on the same pairs with the recipe's own
# decoding and each setting, from the moment its training ends, beside the pipeline's own sampling
# (about 30 s; DECODE_S and the pipeline's limit bound it). Off by default: run after the
# pipelines, as before cd75026, it brought two modes within 20 s of the device's limit.
set -uo pipefail
DECODE=${DECODE-}  # off unless asked for (device_setup.sh reads DECODE=default)
source env/device/device_setup.sh
export PIPELINE_ROOT=/tmp/runs
run_name() { echo qqp-fast-${1//_/-}; }  # a mode's run name (MODES=full_quiet: qqp-fast-full-quiet)
one_mode() {
  local mode=$1 name; name=$(run_name $1)
  local sets=(--set data.train=.device/data/train.jsonl --set data.valid=.device/data/valid.jsonl
        --set resources.train.gpus=1 --set resources.sample.gpus=1 --set evaluate.bertscore_model=null
        --set sample.max_examples=${N:-200})
  for s in ${SET:-}; do sets+=(--set "$s"); done
  local limit=${LIMIT_S:-$([ "${SEQUENTIAL:-0}" = 1 ] && echo 320 || echo 580)}
  rm -rf "$PIPELINE_ROOT/$name" /tmp/samples_$mode.txt  # a warm machine's earlier run would resume
  local started=$SECONDS
  run "fast_$mode" $limit python3 -m pipeline.cli submit jobs/qqp_fast_$mode.yaml --executor local --wait "${sets[@]}" &
  local submit=$!
  if [ -n "$DECODE" ]; then  # the decoding ablations start as soon as the last checkpoint is written
    while kill -0 $submit 2>/dev/null && [ ! -f $PIPELINE_ROOT/$name/state/train.done ]; do sleep 3; done
    local left=$((limit - (SECONDS - started)))  # no later than the pipeline's own limit
    [ -f $PIPELINE_ROOT/$name/state/train.done ] && [ $left -gt 10 ] &&
      decode_last $mode "$mode noising" $((left < ${DECODE_S:-45} ? left : ${DECODE_S:-45})) $PIPELINE_ROOT/$name/checkpoints
  fi
  wait $submit
  python3 -m pipeline.cli cancel $name > /dev/null 2>&1  # nothing left on the card if it ran out of time
  cp $PIPELINE_ROOT/$name/train_log.jsonl "$OUT/train_log_$mode.jsonl" 2>/dev/null
  for f in $PIPELINE_ROOT/$name/samples/step_*/samples.jsonl; do
    [ -f "$f" ] && { echo "== $f"; head -12 "$f"; } >> "/tmp/samples_$mode.txt"; done
}
MODES=${MODES:-target full}
if [ "${SEQUENTIAL:-0}" = 1 ]; then
  for mode in $MODES; do one_mode $mode; done
else
  for mode in $MODES; do one_mode $mode & done; wait
fi
RUNS=$(for mode in $MODES; do run_name $mode; done)
for mode in $MODES; do cat /tmp/samples_$mode.txt; done > "$OUT/samples.txt" 2>/dev/null
python3 -m pipeline.cli results $RUNS --out /tmp/results 2>&1 | tee "$OUT/table.txt"
python3 env/device/quality_summary.py $(for r in $RUNS; do echo $PIPELINE_ROOT/$r; done) | tee -a "$OUT/table.txt"
for mode in $MODES; do sed -n '/^| /p' "$OUT/decode_$mode.log" 2>/dev/null; done | tee -a "$OUT/table.txt"
# every run's samples, metrics, logs and results in one file (the device tool returns few files)
tar czf "$OUT/runs.tgz" -C $PIPELINE_ROOT --exclude=checkpoints --exclude=state --exclude=data . 2>/dev/null
