"""Reverse diffusion with DiffuSeq's per-step rounding: `sample_tokens`, a short loop over the
noising mode (noising.py), the rounding (rounding.py) and the solver (solvers.py) a config names.

At each step t (from T-1 down to 0 over the schedule's steps, all T or a time-uniform subset) the
noising mode sets the source positions of the state, the denoiser predicts z_0, from
t >= clamp_step on the rounding replaces that prediction, and the solver moves z_t to the next
step; the target is read out at the end as argmax of lm_head (PAD lowered by sample.pad_penalty,
the first sample.min_target_tokens target positions text only, a length fixed beforehand held:
lengths.py; a model trained with its targets' ends clean, diffusion.clean_target_end, sees them
clean at every step too). A self-conditioned denoiser gets its previous (unrounded) estimate of
z_0 back at every step, zeros at the first. One step is
`ReverseStep`; with sample.cuda_graphs the steps between a batch's first and last replay it from
one CUDA graph (sample_graphs.py), with the same tokens.

With `within_width` (a width-masked model, model.width_mask) each sequence is denoised inside its
own width: the denoiser attends there alone, the positions past it read out as PAD, and every
noise draw is made max_positions wide and cut to the batch, so a sequence's tokens are the same
whether its batch is cut to its widest sequence (trimmed) or not.

This module also holds the tensor work of rounding: `nearest_embedding` (L2 or by the decoder's
scores, fused on CUDA) and `soft_embedding`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch

from .config import Config
from .data import PAD, SPECIAL_TOKENS, source_part
from .lengths import HeldLayout, held_layout
from .model import Denoiser
from .noising import noising_mode
from .rounding import ROUNDINGS
from .sample_graphs import REPLAYED_FROM, replay_steps
from .schedule import Schedule
from .solvers import SOLVERS


NOT_TEXT = len(SPECIAL_TOKENS)  # the special tokens take the ids below it (PAD, UNK, CLS, SEP): no text


def rounding_offsets(embedding: torch.Tensor, bias: torch.Tensor | None = None, pad_penalty: float = 0.0,
                     text_only: bool = False) -> torch.Tensor:
    """(V,) fp32: the per-token offset o_v of nearest_embedding's score 2 z.e_v - o_v, which picks
    the nearest embedding in L2 (|e_v|^2) or, with `bias` (the decoder's), the argmax of the logits
    z.e_v + b_v (-2 b_v); PAD's raised by 2 * pad_penalty, and every special token's out of reach
    with `text_only`. It depends on the weights and those settings alone: a sampler makes it once, not every step."""
    offsets = embedding.detach().float().pow(2).sum(-1) if bias is None else -2 * bias.detach().float()
    if pad_penalty or text_only:
        offsets = offsets.clone()
        offsets[PAD] += 2 * pad_penalty
    if text_only:
        offsets[:NOT_TEXT] = 1e30  # a score of -1e30: finite in fp32 and bf16, below any token's
    return offsets


def nearest_embedding(z: torch.Tensor, embedding: torch.Tensor, chunk_elements: int = 1 << 26,
                      fused: bool = True, bias: torch.Tensor | None = None, pad_penalty: float = 0.0,
                      text_only: bool = False, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids (...,) of the word embeddings nearest (L2) to z (..., D); with `bias` (the
    decoder's), the argmax of the logits z.e_v + b_v instead. `pad_penalty` lowers PAD's score
    by that much (in logits; for L2, |z - e_PAD|^2 counts 2 * pad_penalty more); `text_only`
    never picks a special token (PAD, UNK, CLS, SEP). `offsets`, made once by `rounding_offsets`,
    stands for those three.

    argmin_v |z - e_v|^2 = argmax_v (2 z.e_v - |e_v|^2), and argmax_v (z.e_v + b_v) = argmax_v
    (2 z.e_v + 2 b_v): one score with a per-token offset. On CUDA (with `fused`) one Triton kernel
    scores bf16 x bf16 -> fp32 tiles and keeps the running argmax (kernels.py); elsewhere rows are
    processed in chunks so the (rows, V) score matrix never exceeds `chunk_elements`.
    """
    if offsets is None:
        offsets = rounding_offsets(embedding, bias, pad_penalty, text_only)
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


def first_target_positions(input_mask: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) the positions right after each sequence's target [CLS] (the first mask-1
    position; the source part before it is mask 0)."""
    target_cls = source_part(input_mask)[:, None]
    positions = target_cls + 1 + torch.arange(count, device=input_mask.device)
    return positions.clamp(max=input_mask.shape[-1] - 1)


def _fused_rounding_available(dim: int) -> bool:
    try:
        from . import kernels
    except ImportError:  # no Triton
        return False
    return kernels.supported(dim)


class Noise:
    """Where a batch's noise comes from. With a sequence of k generators the batch is k equal
    groups of rows, one after the other, and group i draws all its noise from generator i, in the
    shapes and order one group alone would: k seeds decoded in one batch give each seed's tokens as
    if it had been decoded by itself. A width-masked batch draws max_positions wide and is cut."""

    def __init__(self, generator: torch.Generator | Sequence[torch.Generator] | None, rows: int, drawn_length: int):
        if not (generator is None or isinstance(generator, torch.Generator)):
            if rows % len(generator):
                raise ValueError(f"{rows} rows do not split into {len(generator)} equal groups, one a generator")
            if len(generator) == 1:  # one seed: its draws as they are, without a copy per draw
                generator = generator[0]
        self.generator, self.drawn_length = generator, drawn_length

    def _draw(self, x: torch.Tensor, generator) -> torch.Tensor:
        shape = (x.shape[0], self.drawn_length, *x.shape[2:])
        return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)[:, : x.shape[1]]

    def like(self, x: torch.Tensor) -> torch.Tensor:
        if self.generator is None or isinstance(self.generator, torch.Generator):
            return self._draw(x, self.generator)
        groups = zip(x.chunk(len(self.generator)), self.generator, strict=True)
        return torch.cat([self._draw(group, generator) for group, generator in groups])


def read_out(logits: torch.Tensor, pad_penalty: float, text_at: torch.Tensor | None,
             text: torch.Tensor | None = None, held: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) the tokens of the final state's logits, PAD lowered, text only where asked (the
    first positions `text_at`, or the (B, L) mask `text`) and the `held` tokens (-1: none) kept."""
    if pad_penalty:
        logits[..., PAD] -= pad_penalty
    if text_at is not None:
        logits[torch.arange(len(logits), device=logits.device)[:, None], text_at, :NOT_TEXT] = -math.inf
    if text is not None:
        logits[..., :NOT_TEXT] = logits[..., :NOT_TEXT].masked_fill(text[..., None], -math.inf)
    tokens = logits.argmax(-1)
    return tokens if held is None else held.where(held >= 0, tokens)


class ReverseState(NamedTuple):
    """What a reverse step carries to the next."""

    z: torch.Tensor  # (B, L, D) fp32
    previous_z_0: torch.Tensor | None  # the denoiser's last estimate, unrounded (self-conditioning only)
    history: torch.Tensor | None  # what the solver keeps from one step to the next (dpm++2m: the last estimate)


class ReverseStep:
    """One reverse step of one batch, z at step -> z at step - 1: the plain loop calls it at every
    step; a CUDA graph records `body` once and replays it for the steps between the first and the
    last (sample_graphs.py)."""

    def __init__(self, denoiser: Denoiser, schedule: Schedule, cfg: Config, input_mask: torch.Tensor,
                 embedding: torch.Tensor, within_width: torch.Tensor | None = None,
                 on_step: Callable[[int, torch.Tensor], None] | None = None, layout: HeldLayout | None = None):
        self.denoiser, self.schedule, self.cfg = denoiser, schedule, cfg
        self.noising, self.solver = noising_mode(cfg.diffusion, cfg.sample), SOLVERS[cfg.sample.solver](cfg.sample)
        self.rounding = ROUNDINGS[cfg.sample.rounding](denoiser, cfg.sample, input_mask, layout)
        self.input_mask, self.embedding, self.on_step = input_mask, embedding, on_step
        self.width = {} if within_width is None else {"within_width": within_width}
        self.clean_end = None  # diffusion.clean_target_end: (B, L, 1), where the state stays the clean embedding
        if cfg.diffusion.clean_target_end:
            if layout is None:
                raise ValueError("diffusion.clean_target_end: the targets' lengths must be fixed beforehand")
            self.clean_end = layout.end[..., None]

    def hold_end(self, z: torch.Tensor) -> torch.Tensor:
        """z with each target's end clean, as the model trained with diffusion.clean_target_end saw it."""
        return z if self.clean_end is None else self.embedding.where(self.clean_end, z)

    def rounds(self, step: int) -> bool:
        """Whether the step's estimate is rounded (from t >= sample.clamp_step on)."""
        return int(self.schedule.timestep_map[step]) >= self.cfg.sample.clamp_step

    def __call__(self, state: ReverseState, step: int, randn_like) -> ReverseState:
        t = torch.full((len(state.z),), step, device=state.z.device, dtype=torch.long)
        return self.body(state, step, t, randn_like)

    def body(self, state: ReverseState, step: int, t: torch.Tensor, randn_like, coefficients=None) -> ReverseState:
        """The step at `step` (its index t as a tensor); `coefficients`: the solver's numbers as
        tensors (None: the solver works them out for `step`)."""
        z = self.noising.before_step(self.schedule, state.z, self.embedding, t, self.input_mask, randn_like)
        if self.on_step is not None:
            self.on_step(step, z)
        timesteps = self.schedule.model_timesteps(t, self.cfg.diffusion.rescale_timesteps, self.cfg.sample.time_floor)
        predicted_z_0 = self.denoiser(z, timesteps, state.previous_z_0, **self.width).float()
        previous_z_0 = None if state.previous_z_0 is None else predicted_z_0
        if self.rounds(step):
            predicted_z_0 = self.rounding(predicted_z_0)
        z, history = self.solver.step(self.schedule, z, predicted_z_0, state.history, step, randn_like, coefficients)
        return ReverseState(self.hold_end(self.noising.after_step(z, self.embedding, self.input_mask)), previous_z_0,
                            history)


@torch.no_grad()
def sample_tokens(denoiser: Denoiser, schedule: Schedule, input_ids: torch.Tensor, input_mask: torch.Tensor,
                  cfg: Config, generator: torch.Generator | Sequence[torch.Generator] | None = None,
                  within_width: torch.Tensor | None = None,
                  on_step: Callable[[int, torch.Tensor], None] | None = None,
                  target_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) token ids sampled for a batch of encoded sequences, as cfg's diffusion and sample
    sections say; the target part is the output. `generator`: see Noise. `on_step(t, z_t)` is
    called with the state the denoiser sees at every step (for inspection; the steps then run
    without CUDA graphs). `target_lengths` (B,): each target's tokens, fixed beforehand
    (sample.target_length predicted; lengths.held_layout); None: the model's own."""
    layout = None if target_lengths is None else held_layout(input_mask, target_lengths)
    if layout is not None:  # the target's end as the sampler holds it (a clean end is embedded from these)
        input_ids = layout.held.where(layout.held >= 0, input_ids)
    emb = denoiser.embed(input_ids).float()  # (B, L, D), the clean embedding; the state z stays fp32
    noise = Noise(generator, len(input_ids), emb.shape[1] if within_width is None else denoiser.cfg.max_positions)
    within_width = None if within_width is None else within_width.to(emb.device)
    reverse = ReverseStep(denoiser, schedule, cfg, input_mask, emb, within_width, on_step, layout)
    state = ReverseState(reverse.hold_end(reverse.noising.start(noise.like(emb), emb, input_mask)),
                         torch.zeros_like(emb) if denoiser.cfg.self_condition else None, None)
    steps = list(reversed(range(schedule.num_steps)))
    if cfg.sample.cuda_graphs and on_step is None and len(steps) >= REPLAYED_FROM:
        state = replay_steps(reverse, state, steps, noise.like)
    else:
        for step in steps:
            state = reverse(state, step, noise.like)
    rounding = reverse.rounding
    tokens = read_out(denoiser.logits(state.z), cfg.sample.pad_penalty, rounding.text_at, rounding.text, rounding.held)
    return tokens if within_width is None else tokens.masked_fill(~within_width, PAD)
