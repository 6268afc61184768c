"""Speed measurements, one subcommand each; every measurement is one JSON line on stdout (`^{`).

    python -m diffusion.bench train  [--tiny] [--batch-size 2048 --micro-batch 512 --steps 3 --warmup 1]
                                     [--zero-stage 2 --zero JSON --precision auto --no-compile --profile ...]
    torchrun --nproc_per_node N -m diffusion.bench train --zero-stage 2           # N ranks, rank 0 prints
    python -m diffusion.bench sample [--tiny] [--sample-batch 2048 --sample-steps 20 --sample-weights bf16]
                                     [--no-gelu-epilogue --no-compile --inductor JSON --profile ...]
    python -m diffusion.bench [--skip-train] [--skip-sample] [train and sample options]   # both, one line
    python -m diffusion.bench profile SPEC [--set KEY=VALUE ...] [--steps 100] [--rounds 4] [--warmup 100]
                                           [--variants shipped,graphed] [--profile-steps 10] [--workdir DIR]
    python -m diffusion.bench decode CHECKPOINT SPLIT [--set sample.KEY=VALUE ...] [--rounds 3] [--profile]
    python -m diffusion.bench attention                                           # GPU only

- train (train.py): tokens/s of full DeepSpeed steps on random full-length token ids (as DiffuSeq's
  own figures were taken), achieved TFLOP/s (6 x parameters x tokens), its share of --peak-tflops
  and of the bf16 matmul peak measured on this card, peak GPU memory; one line
  {..., "train": {...}}.
- sample (sample.py): sentences/s of reverse steps with per-step rounding, extrapolated to T steps,
  the time of the rounding alone, peak GPU memory; one line {..., "sample": {...}}.
- no subcommand: both in one line {..., "train": {...}, "sample": {...}}, as before the subcommands
  (the options of both; --skip-train and --skip-sample leave one out).
- profile (profile.py): where a training step of a job spec's recipe (jobs/*.yaml) spends its
  time, the plain step and the step replayed from CUDA graphs (or the trainer's bookkeeping
  variants) taking turns, then a torch.profiler trace of each (GPU only); a JSON line a timed
  segment, with its loss, and a markdown table.
- decode (decode.py): a trained checkpoint decoding a split as `diffusion.sample` does, round
  after round in one process (the first pays a fresh process's warm-up): a JSON line a round
  (seconds, sentences/s, outputs the same as the first round's), the outputs' scores, and with
  --profile a trace of one more round (GPU only).
- attention (attention.py): masked attention per SDPA backend, and the denoiser with the width
  mask, against fp32; one JSON line a length. Without a CUDA GPU it says so and exits 2.
`--tiny` (train, sample) measures a tiny model, so that CI can check the commands run on a CPU.
"""
