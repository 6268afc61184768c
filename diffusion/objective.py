"""DiffuSeq's training objective, for every noising mode (noising.py says what each does to the
source positions of z_t; with diffusion.clean_target_end each target's [SEP] and PADs stay clean
too). In all, the loss covers every position:

    loss = mse(z_0, f(z_t, t))  (at t = 0 against the embedding itself)
         + decoder_nll          (cross-entropy of lm_head(z_0): keeps embeddings decodable)
         + tT_loss              (|sqrt(abar_T) z_0|^2: the prior at T is N(0, I))
         [+ anchor_loss * anchor (cross-entropy of lm_head(f(z_t, t)) at the noised positions)]

With diffusion.absorb_rate (DiffuSeq-v2's discrete noise), some noised target positions of z_t
hold one learned absorbing vector instead, the more often the noisier t; only training asks
noised() for them, so the diagnostics see z_t as sampling does.

With self-conditioning, f also sees its own estimate of z_0 from a first pass without gradient,
in half of the examples (zeros in the others, as at the first reverse step). Besides the loss
terms, forward() returns the mse split into source and target positions, for the logs: under
full noising it shows where the capacity goes.

With `within_width` (model.width_mask), a function of the input mask giving each sequence's
own positions, the denoiser attends only to those and every term is a mean over them alone: the
batch's padding past a sequence's width takes no part.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DiffusionConfig
from .lengths import target_end
from .model import Denoiser
from .noising import noising_mode
from .schedule import Schedule


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: (B, ...) -> (B,)."""
    return x.float().mean(dim=tuple(range(1, x.ndim)))


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid positions (B, L) and any trailing dimensions of x (B, L, ...): (B,)."""
    x = x.float()
    weights = valid.float().view(*valid.shape, *([1] * (x.ndim - 2)))
    per_position = x[0, 0].numel()
    return (x * weights).sum(dim=tuple(range(1, x.ndim))) / (valid.float().sum(-1) * per_position).clamp_min(1)


# Inductor options for the compiled loss. fallback_random: dropout masks come from torch's own
# (Philox4x32, four numbers a call) generator instead of Inductor's in-kernel one, which drew one
# number a call and made each fused LayerNorm-dropout kernel compute-bound.
COMPILE_OPTIONS = {"fallback_random": True}


class DiffusionObjective(nn.Module):
    """The module DeepSpeed trains: denoiser + loss. forward() returns the per-sequence loss terms."""

    def __init__(self, denoiser: Denoiser, schedule: Schedule, diffusion: DiffusionConfig,
                 autocast_dtype: torch.dtype | None = None, compile: bool = False, dynamic_length: bool = False,
                 within_width=None):
        super().__init__()
        self.denoiser = denoiser
        self.schedule = schedule
        self.noising = noising_mode(diffusion)
        self.rescale_timesteps = diffusion.rescale_timesteps
        self.anchor_loss = diffusion.anchor_loss
        self.clean_target_end = diffusion.clean_target_end
        self.absorb_rate = diffusion.absorb_rate
        if self.absorb_rate > 0:  # a parameter only where used: DiffuSeq's checkpoints keep their names
            dim = denoiser.cfg.embed_dim
            self.absorbing = nn.Parameter(torch.randn(dim) * dim**-0.5)  # an embedding's scale, as v2
        self.dynamic_length = dynamic_length  # trimmed batches: one compiled graph for every width
        self.within_width = within_width  # input_mask -> (B, L) bool of each sequence's own positions, or None
        # autocast is entered here, inside the module: DeepSpeed's engine.forward turns off an
        # autocast entered around it unless its own torch_autocast option is set
        self.autocast_dtype = autocast_dtype
        # torch.compile of the whole loss (denoiser + cross-entropy over the vocabulary) fuses the
        # LayerNorms, GELUs, dropouts, casts and the softmax into few kernels; a plain attribute,
        # not a submodule, so the state dict keeps its names
        self._compiled = torch.compile(self.autocast_loss_terms, options=COMPILE_OPTIONS) if compile else None

    def noised(self, input_ids: torch.Tensor, input_mask: torch.Tensor, t: torch.Tensor, randn_like=torch.randn_like,
               absorb: bool = False):
        """(embedding, z_0, z_t) of a batch, each (B, L, D), under this noising mode (`randn_like`:
        where the noise comes from, e.g. a seeded generator; `absorb`: with diffusion.absorb_rate's
        absorbing vector, as training sees z_t)."""
        s = self.schedule
        emb = self.denoiser.embed(input_ids)
        zeros = torch.zeros_like(t)
        z_0 = emb + s.gather("sqrt_one_minus_alphas_cumprod", zeros, emb.ndim) * randn_like(emb)
        noise = randn_like(z_0)
        z_t = self.noising.training_z_t(s, z_0, s.q_sample(z_0, t, noise), t, noise, input_mask)
        if absorb and self.absorb_rate > 0:
            z_t = self.absorbed(z_t, input_mask, t)
        if self.clean_target_end:  # the target's [SEP] and PADs as clean as a source: its length told
            z_t = torch.where(target_end(input_ids, input_mask)[..., None], z_0, z_t)
        return emb, z_0, z_t

    def absorbed(self, z_t: torch.Tensor, input_mask: torch.Tensor, t: torch.Tensor):
        """z_t with each target position replaced by the absorbing vector with probability
        absorb_rate * sqrt(1 - abar_t); the source stays as it is (and noised() puts a told
        target's end back clean after this)."""
        chance = self.absorb_rate * self.schedule.gather("sqrt_one_minus_alphas_cumprod", t, 2)  # (B, 1)
        hit = (torch.rand(input_mask.shape, device=input_mask.device) < chance) & (input_mask == 1)
        return torch.where(hit[..., None], self.absorbing.to(z_t.dtype), z_t)

    def forward(self, input_ids: torch.Tensor, input_mask: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._compiled is not None:
            self.schedule.cache_on(input_ids.device)
            if self.dynamic_length:
                torch._dynamo.maybe_mark_dynamic(input_ids, 1)
                torch._dynamo.maybe_mark_dynamic(input_mask, 1)
            return self._compiled(input_ids, input_mask, t)
        return self.autocast_loss_terms(input_ids, input_mask, t)

    def autocast_loss_terms(self, input_ids: torch.Tensor, input_mask: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        enabled = self.autocast_dtype is not None
        with torch.autocast(input_ids.device.type, dtype=self.autocast_dtype, enabled=enabled):
            return self.loss_terms(input_ids, input_mask, t)

    def loss_terms(self, input_ids: torch.Tensor, input_mask: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.schedule
        emb, z_0, z_t = self.noised(input_ids, input_mask, t, absorb=True)
        model_t = s.model_timesteps(t, self.rescale_timesteps)
        valid = None if self.within_width is None else self.within_width(input_mask)
        width = {} if valid is None else {"within_width": valid}
        if self.denoiser.cfg.self_condition:
            with torch.no_grad():
                first_estimate = self.denoiser(z_t, model_t, **width)
            dropped = torch.rand(t.shape, device=t.device) < 0.5
            previous = torch.where(dropped[:, None, None], torch.zeros_like(first_estimate), first_estimate)
            predicted_z_0 = self.denoiser(z_t, model_t, previous, **width)
        else:
            predicted_z_0 = self.denoiser(z_t, model_t, **width)
        mean = mean_flat if valid is None else (lambda x: masked_mean(x, valid))
        mse = torch.where(t == 0, mean((emb - predicted_z_0) ** 2), mean((z_0 - predicted_z_0) ** 2))
        last = torch.full_like(t, s.num_steps - 1)
        t_T = mean((s.gather("sqrt_alphas_cumprod", last, z_0.ndim) * z_0) ** 2)
        logits = self.denoiser.logits(z_0)  # (B, L, V)
        # flattened to (B*L, V): cross-entropy over a strided class dim is several times slower
        nll = F.cross_entropy(logits.flatten(0, 1).float(), input_ids.flatten(), reduction="none")
        nll = mean(nll.view(input_ids.shape))
        terms = {"loss": mse + nll + t_T, "mse": mse, "nll": nll, "tT": t_T}
        if self.anchor_loss > 0:
            noised = torch.ones_like(input_mask, dtype=torch.float32) if self.noising.noises_source else input_mask.float()
            if valid is not None:
                noised = noised * valid
            anchor_logits = self.denoiser.logits(predicted_z_0).flatten(0, 1).float()
            anchor = F.cross_entropy(anchor_logits, input_ids.flatten(), reduction="none").view(input_ids.shape)
            terms["anchor"] = (anchor * noised).sum(-1) / noised.sum(-1).clamp_min(1)
            terms["loss"] = terms["loss"] + self.anchor_loss * terms["anchor"]
        with torch.no_grad():  # for the logs only
            reference = torch.where((t == 0)[:, None, None], emb, z_0)
            per_position = ((reference - predicted_z_0).float() ** 2).mean(-1)  # (B, L)
            source = 1.0 - input_mask.float()
            target = input_mask if valid is None else input_mask * valid
            terms["mse_source"] = (per_position * source).sum(-1) / source.sum(-1).clamp_min(1)
            terms["mse_target"] = (per_position * target).sum(-1) / target.sum(-1).clamp_min(1)
        return terms
