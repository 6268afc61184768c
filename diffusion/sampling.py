"""Reverse diffusion with DiffuSeq's per-step rounding, for both noising modes and three solvers.

At each step t (from T-1 down to 0 over the schedule's steps, all T or a time-uniform subset) the
denoiser predicts z_0; from t >= clamp_step on, that prediction is replaced by its nearest word
embedding (L2, DiffuSeq's "clamping"), by the embedding of the decoder's argmax (`logits`), or by
the decoder's expected embedding (`soft`, softmax at `soft_temperature`); then the solver moves
z_t to the next step:

- ddpm (DiffuSeq): z_{t-1} ~ N(posterior_mean(z_0, z_t), fixed variance);
- ddim: z_{t-1} = sqrt(abar') z_0 + sqrt(1 - abar' - sigma^2) eps + sigma noise, with
  sigma = eta * sqrt(posterior variance) (eta = 0: deterministic; eta = 1: DDPM's mean);
- dpm++2m: DPM-Solver++(2M) (Lu et al. 2022), the multistep second-order solver for an
  x0-predicting model; its first step (no history yet) is DDIM's with eta = 0.

After the step at t = 0 every solver holds the (rounded) z_0 prediction. Source positions are
handled by mode:

- target (DiffuSeq): the source stays the clean embedding at every step;
- full, conditional: before each step the source is the clean embedding forward-diffused to
  that step's noise level (fresh noise; with `source_noise` s < 1, to s of its variance), while
  the target is denoised;
- full, joint: source and target are denoised together from pure noise.

The target is read out at the mask-1 positions as argmax of lm_head. With `min_target_tokens` k
the first k positions after the target's [CLS] choose among text tokens only (not PAD, UNK, CLS
or SEP), at each rounding and in the read-out: an output is never empty (as a minimum length
bars end-of-sentence in autoregressive decoding). A self-conditioned
denoiser gets its previous (unrounded) estimate of z_0 back at every step, zeros at the first.

With `within_width` (a width-masked model, model.width_mask) each sequence is denoised inside its
own width: the denoiser attends there alone, the positions past it read out as PAD, and every
noise draw is made max_positions wide and cut to the batch, so a sequence's tokens are the same
whether its batch is cut to its widest sequence (trimmed) or not.
"""

from __future__ import annotations

import math
import typing
from typing import Callable, Sequence

import torch

from .config import Solver
from .data import PAD, SPECIAL_TOKENS
from .model import Denoiser
from .objective import keep_source
from .schedule import Schedule


NOT_TEXT = len(SPECIAL_TOKENS)  # the special tokens take the ids below it (PAD, UNK, CLS, SEP): no text


def nearest_embedding(z: torch.Tensor, embedding: torch.Tensor, chunk_elements: int = 1 << 26,
                      fused: bool = True, bias: torch.Tensor | None = None, pad_penalty: float = 0.0,
                      text_only: bool = False) -> torch.Tensor:
    """Token ids (...,) of the word embeddings nearest (L2) to z (..., D); with `bias` (the
    decoder's), the argmax of the logits z.e_v + b_v instead. `pad_penalty` lowers PAD's score
    by that much (in logits; for L2, |z - e_PAD|^2 counts 2 * pad_penalty more); `text_only`
    never picks a special token (PAD, UNK, CLS, SEP).

    argmin_v |z - e_v|^2 = argmax_v (2 z.e_v - |e_v|^2), and argmax_v (z.e_v + b_v) = argmax_v
    (2 z.e_v + 2 b_v): one score with a per-token offset. On CUDA (with `fused`) one Triton kernel
    scores bf16 x bf16 -> fp32 tiles and keeps the running argmax (kernels.py); elsewhere rows are
    processed in chunks so the (rows, V) score matrix never exceeds `chunk_elements`.
    """
    offsets = embedding.detach().float().pow(2).sum(-1) if bias is None else -2 * bias.detach().float()  # (V,)
    if pad_penalty or text_only:
        offsets = offsets.clone()
        offsets[PAD] += 2 * pad_penalty
    if text_only:
        offsets[:NOT_TEXT] = 1e30  # a score of -1e30: finite in fp32 and bf16, below any token's
    if fused and z.is_cuda and _fused_rounding_available(z.shape[-1]):
        from . import kernels

        return kernels.nearest_embedding(z, embedding, offsets=offsets)
    flat = z.reshape(-1, z.shape[-1]).to(embedding.dtype)
    sq_norms = offsets.to(embedding.dtype)
    rows = max(1, chunk_elements // embedding.shape[0])
    ids = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
    for start in range(0, flat.shape[0], rows):
        scores = torch.addmm(sq_norms, flat[start : start + rows], embedding.t(), beta=-1, alpha=2)
        ids[start : start + rows] = scores.argmax(-1)
    return ids.view(z.shape[:-1])


def soft_embedding(z: torch.Tensor, embedding: torch.Tensor, bias: torch.Tensor, temperature: float = 1.0,
                   pad_penalty: float = 0.0, chunk_elements: int = 1 << 26) -> torch.Tensor:
    """(..., D) the mean word embedding under softmax(lm_head(z) / temperature): the decoder's
    expectation of z's token instead of its argmax. A blurry z (high noise) stays a blend of its
    likely tokens rather than committing to one; a sharp one lands on its token's embedding as
    hard rounding would (temperature -> 0 is `nearest_embedding` with the bias)."""
    weight = embedding.detach().to(z.dtype)
    offsets = bias.detach().to(z.dtype)
    if pad_penalty:
        offsets = offsets.clone()
        offsets[PAD] -= pad_penalty
    flat = z.reshape(-1, z.shape[-1])
    out = torch.empty_like(flat)
    rows = max(1, chunk_elements // embedding.shape[0])
    for start in range(0, flat.shape[0], rows):
        logits = torch.addmm(offsets, flat[start : start + rows], weight.t())
        out[start : start + rows] = torch.softmax(logits.float() / temperature, dim=-1).to(z.dtype) @ weight
    return out.view(z.shape)


SOLVERS = typing.get_args(Solver)
ROUNDINGS = ("l2", "logits", "soft")


def _abar(schedule: Schedule, step: int) -> float:
    return float(schedule.alphas_cumprod[step])


def ddim_step(schedule: Schedule, z: torch.Tensor, predicted_z_0: torch.Tensor, step: int, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """z at step-1 from z at `step` (> 0) and the z_0 prediction: DDIM (Song et al. 2021), with
    sigma = eta * sqrt(posterior variance); eta = 1 gives exactly DDPM's posterior mean."""
    abar, abar_next = _abar(schedule, step), _abar(schedule, step - 1)
    eps = (z - abar**0.5 * predicted_z_0) / (1 - abar) ** 0.5
    sigma = eta * float(schedule.posterior_variance[step]) ** 0.5
    z_next = abar_next**0.5 * predicted_z_0 + max(1 - abar_next - sigma**2, 0.0) ** 0.5 * eps
    return z_next + sigma * noise if noise is not None and sigma > 0 else z_next


def _log_snr(schedule: Schedule, step: int) -> float:
    """lambda = log(alpha / sigma) at `step`, with alpha = sqrt(abar), sigma = sqrt(1 - abar)."""
    abar = _abar(schedule, step)
    return 0.5 * math.log(abar / (1 - abar))


def dpm_solver_2m_step(schedule: Schedule, z: torch.Tensor, predicted_z_0: torch.Tensor, step: int,
                       previous_z_0: torch.Tensor | None) -> torch.Tensor:
    """z at step-1 from z at `step` (> 0): DPM-Solver++(2M). With h = lambda' - lambda,
    z' = (sigma'/sigma) z - alpha' (e^-h - 1) D, where D = z_0 (first order, = DDIM eta 0) or,
    with the previous step's prediction, D = (1 + 1/2r) z_0 - (1/2r) z_0_prev, r = h_prev / h."""
    abar, abar_next = _abar(schedule, step), _abar(schedule, step - 1)
    h = _log_snr(schedule, step - 1) - _log_snr(schedule, step)
    direction = predicted_z_0
    if previous_z_0 is not None:
        r = (_log_snr(schedule, step) - _log_snr(schedule, step + 1)) / h
        direction = (1 + 1 / (2 * r)) * predicted_z_0 - (1 / (2 * r)) * previous_z_0
    ratio = ((1 - abar_next) / (1 - abar)) ** 0.5
    return ratio * z - abar_next**0.5 * math.expm1(-h) * direction


def first_target_positions(input_mask: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) the positions right after each sequence's target [CLS] (the first mask-1
    position; the source part before it is mask 0)."""
    target_cls = (input_mask == 0).sum(-1, keepdim=True)
    positions = target_cls + 1 + torch.arange(count, device=input_mask.device)
    return positions.clamp(max=input_mask.shape[-1] - 1)


def _fused_rounding_available(dim: int) -> bool:
    try:
        from . import kernels
    except ImportError:  # no Triton
        return False
    return kernels.supported(dim)


@torch.no_grad()
def sample_tokens(
    denoiser: Denoiser,
    schedule: Schedule,
    input_ids: torch.Tensor,
    input_mask: torch.Tensor,
    noising: str = "target",
    full_mode: str = "conditional",
    clamp_step: int = 0,
    rounding: str = "l2",
    solver: str = "ddpm",
    eta: float = 0.0,
    pad_penalty: float = 0.0,
    source_noise: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    rescale_timesteps: bool = True,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    within_width: torch.Tensor | None = None,
    soft_temperature: float = 1.0,
    min_target_tokens: int = 0,
) -> torch.Tensor:
    """(B, L) token ids sampled for a batch of encoded sequences; the target part is the output.

    With a sequence of k generators the batch is k equal groups of rows, one after the other, and
    group i draws all its noise from generator i, in the shapes and order one group alone would:
    k seeds decoded in one batch give each seed's tokens as if it had been decoded by itself.
    `on_step(t, z_t)` is called with the state the denoiser sees at every step (for inspection).
    """
    if (noising not in ("target", "full") or full_mode not in ("conditional", "joint") or rounding not in ROUNDINGS
            or solver not in SOLVERS):
        raise ValueError(f"unknown sampling mode noising={noising!r} full_mode={full_mode!r} rounding={rounding!r} "
                         f"solver={solver!r}")
    if source_noise != 1 and (noising, full_mode) == ("full", "joint"):
        raise ValueError(f"joint sampling denoises source and target at one noise level; source_noise {source_noise} needs "
                         f"conditional sampling")
    if min_target_tokens and rounding == "soft":
        raise ValueError("min_target_tokens needs a rounding that picks tokens (l2 or logits), not soft")
    if not (generator is None or isinstance(generator, torch.Generator)):
        if len(input_ids) % len(generator):
            raise ValueError(f"{len(input_ids)} rows do not split into {len(generator)} equal groups, one a generator")
        if len(generator) == 1:  # one seed: its draws as they are, without a copy per draw
            generator = generator[0]
    emb = denoiser.embed(input_ids).float()  # (B, L, D), the clean embedding; the state z stays fp32
    embedding = denoiser.word_embedding.weight
    bias = denoiser.lm_head.bias if rounding != "l2" else None

    width = {} if within_width is None else {"within_width": within_width.to(emb.device)}
    drawn_length = emb.shape[1] if within_width is None else denoiser.cfg.max_positions

    def draw(rows: int, gen) -> torch.Tensor:
        shape = (rows, drawn_length, *emb.shape[2:])
        return torch.randn(shape, generator=gen, device=emb.device, dtype=emb.dtype)[:, : emb.shape[1]]

    def randn_like(x):
        if generator is None or isinstance(generator, torch.Generator):
            return draw(x.shape[0], generator)
        return torch.cat([draw(g.shape[0], gen) for g, gen in zip(x.chunk(len(generator)), generator, strict=True)])

    # the positions that must hold text, and the rounding that picks it there
    text_at = first_target_positions(input_mask, min_target_tokens) if min_target_tokens else None

    def round_to_tokens(z_0: torch.Tensor) -> torch.Tensor:
        ids = nearest_embedding(z_0, embedding, bias=bias, pad_penalty=pad_penalty)
        if text_at is None:
            return ids
        at = z_0.gather(1, text_at[..., None].expand(-1, -1, z_0.shape[-1]))  # (B, k, D)
        return ids.scatter(1, text_at, nearest_embedding(at, embedding, bias=bias, pad_penalty=pad_penalty,
                                                         text_only=True))

    z = randn_like(emb)
    previous_z_0 = torch.zeros_like(emb) if denoiser.cfg.self_condition else None
    if noising == "target":
        z = keep_source(z, emb, input_mask)
    last_z_0 = None  # dpm++2m: the previous step's (rounded) z_0
    for step in reversed(range(schedule.num_steps)):
        t = torch.full((emb.shape[0],), step, device=emb.device, dtype=torch.long)
        if noising == "full" and full_mode == "conditional":
            z = keep_source(z, schedule.q_sample_share(emb, t, randn_like(emb), source_noise), input_mask)
        if on_step is not None:
            on_step(step, z)
        predicted_z_0 = denoiser(z, schedule.model_timesteps(t, rescale_timesteps), previous_z_0, **width).float()
        if previous_z_0 is not None:
            previous_z_0 = predicted_z_0
        if int(schedule.timestep_map[step]) >= clamp_step:
            predicted_z_0 = (soft_embedding(predicted_z_0, embedding, bias, soft_temperature, pad_penalty)
                             if rounding == "soft" else
                             denoiser.embed(round_to_tokens(predicted_z_0)).float())
        if solver == "ddpm":
            mean = schedule.posterior_mean(predicted_z_0, z, t)
            if step > 0:
                z = mean + schedule.gather("reverse_variance", t, z.ndim).sqrt() * randn_like(z)
            else:
                z = mean
        elif step == 0:
            z = predicted_z_0
        elif solver == "ddim":
            z = ddim_step(schedule, z, predicted_z_0, step, eta, randn_like(z) if eta else None)
        else:
            z, last_z_0 = dpm_solver_2m_step(schedule, z, predicted_z_0, step, last_z_0), predicted_z_0
        if noising == "target":
            z = keep_source(z, emb, input_mask)
    logits = denoiser.logits(z)
    if pad_penalty:
        logits[..., PAD] -= pad_penalty
    if text_at is not None:
        logits[torch.arange(len(logits), device=logits.device)[:, None], text_at, :NOT_TEXT] = -math.inf
    tokens = logits.argmax(-1)
    return tokens if within_width is None else tokens.masked_fill(~width["within_width"], PAD)
