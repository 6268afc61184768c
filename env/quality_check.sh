#!/usr/bin/env bash
# Issue 12 in one device call on one GPU, from the repo root: the budget recipe for both noising
# modes (jobs/qqp_fast_target.yaml, jobs/qqp_fast_full.yaml) through `pipeline submit --executor
# local --wait` as a user runs it, both at once on the card (about 520 s for the call; side by side
# each one's logged speed is the shared card's, not the card's: MODES=target, or SEQUENTIAL=1 with
# about 240 s a spec, times one alone), each checkpoint sampled on the
# first N=200 pairs of QQP's valid split (single sample, the recipe's solver), then the combined
# table (BLEU, ROUGE-L, Dist-1, len, BLEU against the source, empty outputs, the copy-the-source
# row), the checkpoint diagnostics, the training speed and the first outputs. diffusion/QUALITY.md
# holds what it printed. Needs .device/wheels and .device/data (carried; set-up:
# env/device/device_setup.sh). Extra `--set` values for both: SET="train.steps=100 ...".
# Then each mode's last checkpoint is decoded again on the same pairs with each setting of DECODE
# (env/device/solver_matrix.py: the recipe's own decoding first, then the decoding ablations:
# more solver steps, DiffuSeq's L2 rounding, DDPM's 2,000 steps); DECODE= skips them.
set -uo pipefail
source env/device/device_setup.sh
export PIPELINE_ROOT=/tmp/runs
run_name() { echo qqp-fast-${1//_/-}; }  # a mode's run name (MODES=full_quiet: jobs/qqp_fast_full_quiet.yaml, qqp-fast-full-quiet)
one_mode() {
  local mode=$1 name; name=$(run_name $1)
  local sets=(--set data.train=.device/data/train.jsonl --set data.valid=.device/data/valid.jsonl
        --set resources.train.gpus=1 --set resources.sample.gpus=1 --set evaluate.bertscore_model=null
        --set sample.max_examples=${N:-200})
  for s in ${SET:-}; do sets+=(--set "$s"); done
  local limit=${LIMIT_S:-$([ "${SEQUENTIAL:-0}" = 1 ] && echo 280 || echo 540)}
  run "fast_$mode" $limit python3 -m pipeline.cli submit jobs/qqp_fast_$mode.yaml --executor local --wait "${sets[@]}"
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
if [ -n "$DECODE" ]; then
  for mode in $MODES; do
    decode_last $mode "$mode noising" ${DECODE_S:-90} $PIPELINE_ROOT/$(run_name $mode)/checkpoints & done; wait
  for mode in $MODES; do sed -n '/^| /p' "$OUT/decode_$mode.log"; done | tee -a "$OUT/table.txt"
fi
# every run's samples, metrics, logs and results in one file (the device tool returns few files)
tar czf "$OUT/runs.tgz" -C $PIPELINE_ROOT --exclude=checkpoints --exclude=state --exclude=data . 2>/dev/null
