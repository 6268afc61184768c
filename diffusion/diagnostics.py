"""What a checkpoint has learned, long before BLEU moves: the denoiser's token accuracy at a few
noise levels, and the norms of the word embeddings (a collapse shows as PAD's norm running away
from, or all norms shrinking towards, each other).

Token accuracy at level t: the evaluated pairs are noised to t exactly as in training (the
source kept clean under target noising, noised too under full noising), the denoiser predicts
z_0 once (a self-conditioned one twice, the second time with its first estimate), and
argmax lm_head(prediction) is compared with the tokens at the target's non-PAD positions.
Rounding accuracy: the same with the nearest embedding in L2 instead, DiffuSeq's rounding; where
it falls far below the token accuracy, L2 rounding snaps blurry estimates to the wrong tokens
(those of least norm) and `sample.rounding: logits` is the sampler's remedy.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .data import PAD, batch_width, encode_pairs, sequence_widths, target_budget, width_batches, within_width
from .objective import DiffusionObjective
from .sampling import nearest_embedding
from .schedule import Schedule

# fractions of T: t = 10, 200, 1000 and 1900 of DiffuSeq's 2000 steps (at 1900 the target is
# mostly noise: the denoiser must generate it from the source, as in the first reverse steps)
NOISE_LEVELS = (0.005, 0.1, 0.5, 0.95)


@torch.no_grad()
def token_accuracy(denoiser, cfg, tokenizer, pairs: list[dict], device, levels=NOISE_LEVELS, batch_size: int = 256,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    """{"token_accuracy": {"t=10": accuracy, ...}, "rounding_accuracy": {...}}: the share of non-PAD
    target tokens predicted right at each level, by the logits' argmax and by L2 rounding."""
    schedule = Schedule.named(cfg.diffusion.schedule, cfg.diffusion.steps)
    input_ids, input_mask = encode_pairs(tokenizer, pairs, cfg.data.seq_len, target_budget(cfg.data))
    widths = sequence_widths(input_mask, cfg.data)
    generator = torch.Generator(device).manual_seed(seed)
    result = {"token_accuracy": {}, "rounding_accuracy": {}}
    for fraction in levels:
        step = min(schedule.num_steps - 1, round(fraction * schedule.num_steps))
        right = rounded_right = total = 0
        for batch in width_batches(widths, cfg.data.seq_len, batch_size):
            width = batch_width(widths[batch], cfg.data.seq_len)
            ids, mask = input_ids[batch, :width].to(device), input_mask[batch, :width].to(device)
            predicted = denoise_once(denoiser, schedule, cfg, ids, mask, step, generator)
            tokens = denoiser.logits(predicted).argmax(-1)
            rounded = nearest_embedding(predicted, denoiser.word_embedding.weight)
            scored = (mask == 1) & (ids != PAD)
            right += int(((tokens == ids) & scored).sum())
            rounded_right += int(((rounded == ids) & scored).sum())
            total += int(scored.sum())
        result["token_accuracy"][f"t={step}"] = right / max(total, 1)
        result["rounding_accuracy"][f"t={step}"] = rounded_right / max(total, 1)
    return result


def denoise_once(denoiser, schedule: Schedule, cfg, ids, mask, step: int, generator) -> torch.Tensor:
    """The denoiser's estimate of z_0 from the batch noised to `step` under the model's noising mode."""
    def randn_like(x):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    t = torch.full((ids.shape[0],), step, device=ids.device, dtype=torch.long)
    # the training objective's own noising, with the diagnosis's seeded noise
    objective = DiffusionObjective(denoiser, schedule, cfg.diffusion)
    _, _, z_t = objective.noised(ids, mask, t, randn_like)
    model_t = schedule.model_timesteps(t, cfg.diffusion.rescale_timesteps)
    width = {"within_width": within_width(mask, cfg.data)} if cfg.model.width_mask else {}
    predicted = denoiser(z_t, model_t, **width).float()
    if denoiser.cfg.self_condition:
        predicted = denoiser(z_t, model_t, predicted, **width).float()
    return predicted


@torch.no_grad()
def embedding_norms(denoiser) -> dict[str, float]:
    """Mean L2 norm of the word embeddings (PAD excluded) and PAD's own."""
    norms = denoiser.word_embedding.weight.float().norm(dim=-1)
    return {"embedding_norm": float(norms[PAD + 1:].mean()), "pad_norm": float(norms[PAD])}


def diagnose(checkpoint, pairs: list[dict], device: str | torch.device | None = None) -> dict:
    """Token accuracies and embedding norms of a checkpoint's EMA weights on these pairs (on the
    GPU where there is one)."""
    from .checkpoint import load_exported

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg, denoiser, tokenizer = load_exported(checkpoint, device)
    return {**token_accuracy(denoiser, cfg, tokenizer, pairs, device), **embedding_norms(denoiser)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.diagnostics",
                                     description="token accuracy at a few noise levels and embedding norms of a checkpoint")
    parser.add_argument("checkpoint")
    parser.add_argument("split", help="jsonl of {src, trg} pairs")
    parser.add_argument("--max-examples", type=int)
    args = parser.parse_args(argv)
    from .data import load_pairs

    print(json.dumps(diagnose(args.checkpoint, load_pairs(args.split, args.max_examples))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
