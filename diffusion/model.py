"""DiffuSeq's denoiser: a BERT-shaped Transformer encoder over noisy word embeddings.

    tokens --word_embedding--> z (B, L, 128)        the diffusion space
    z_t --up_proj--> (B, L, 768) + position + time embedding --LayerNorm, dropout-->
        12 post-LN encoder layers --down_proj--> predicted z_0 (B, L, 128)
        (model.norm "pre": pre-LN layers and one LayerNorm after the last)
    lm_head (tied to word_embedding, with bias) turns a z into token logits.

Plain torch; attention is `F.scaled_dot_product_attention`, with no mask by default (DiffuSeq
attends over PAD positions too); with `model.width_mask` a key mask keeps each sequence's
attention inside its own width, so the batch's padding past it changes nothing. Weights use
torch's default init, as DiffuSeq's BertEncoder does.
"""

from __future__ import annotations

import math
import typing

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from .config import AttentionName, ModelConfig

# the scaled_dot_product_attention backends of each sample.attention (None: PyTorch's own choice)
SDPA_BACKENDS = {"default": None, "cudnn": [SDPBackend.CUDNN_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION],
                 "efficient": [SDPBackend.EFFICIENT_ATTENTION], "math": [SDPBackend.MATH]}
assert set(SDPA_BACKENDS) == set(typing.get_args(AttentionName)), "an attention name without its backends"


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (B,) -> (B, dim), [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class EncoderLayer(nn.Module):
    """One BERT layer: self-attention and a GELU feed-forward, each followed by residual + LayerNorm
    (post-LN); with model.norm "pre", each LayerNorm normalises its branch's input instead."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.dropout = cfg.dropout
        self.pre_norm = cfg.norm == "pre"
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.attn_out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.ffn_in = nn.Linear(cfg.hidden_size, cfg.ffn_size)
        self.ffn_out = nn.Linear(cfg.ffn_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.gelu_epilogue = False  # set by Denoiser.use_gelu_epilogue

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.gelu_epilogue:
            # bias + GELU inside the cuBLASLt matmul: the (B*L, 3072) activation is written once
            # instead of written, read and written again (15 of 110 ms a reverse step on H200).
            # On CUDA that GELU is the tanh approximation (within 5e-4 of the exact one).
            inner = torch._addmm_activation(self.ffn_in.bias, h.flatten(0, 1), self.ffn_in.weight.t(), use_gelu=True)
            return self.ffn_out(inner.view(*h.shape[:-1], -1))
        return self.ffn_out(F.gelu(self.ffn_in(h)))

    def attention(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, hidden // self.num_heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)  # (B, heads, L, head_dim)
        return self.attn_out(attn.transpose(1, 2).reshape(batch, length, hidden))

    def forward(self, h: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        if self.pre_norm:
            h = h + F.dropout(self.attention(self.attn_norm(h), attn_mask), p, self.training)
            return h + F.dropout(self.feed_forward(self.ffn_norm(h)), p, self.training)
        h = self.attn_norm(h + F.dropout(self.attention(h, attn_mask), p, self.training))
        return self.ffn_norm(h + F.dropout(self.feed_forward(h), p, self.training))


class Denoiser(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "model.vocab_size must be set (from the tokenizer)"
        self.cfg = cfg
        self.word_embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim)  # N(0, 1) init, trained
        self.lm_head = nn.Linear(cfg.embed_dim, cfg.vocab_size)
        self.lm_head.weight = self.word_embedding.weight  # tied
        time_hidden = 4 * cfg.time_embed_dim
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.time_embed_dim, time_hidden), nn.SiLU(), nn.Linear(time_hidden, cfg.hidden_size)
        )
        # with self-conditioning the input is [z_t | previous estimate of z_0]
        input_dim = 2 * cfg.embed_dim if cfg.self_condition else cfg.embed_dim
        self.up_proj = nn.Sequential(
            nn.Linear(input_dim, cfg.hidden_size), nn.Tanh(), nn.Linear(cfg.hidden_size, cfg.hidden_size)
        )
        self.position_embedding = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.input_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        # pre-LN leaves the residual stream unnormalised: one LayerNorm before the read-out
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12) if cfg.norm == "pre" else None
        self.down_proj = nn.Sequential(
            nn.Linear(cfg.hidden_size, cfg.hidden_size), nn.Tanh(), nn.Linear(cfg.hidden_size, cfg.embed_dim)
        )

    def use_gelu_epilogue(self, on: bool = True) -> None:
        """Fuse each feed-forward's bias and GELU into its first matmul (inference with bf16 weights)."""
        for layer in self.layers:
            layer.gelu_epilogue = on

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, embed_dim) points of the diffusion space."""
        return self.word_embedding(input_ids)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, L, embed_dim) -> (B, L, vocab) token logits."""
        return self.lm_head(z.to(self.lm_head.weight.dtype))

    def forward(self, z_t: torch.Tensor, timesteps: torch.Tensor, previous_z_0: torch.Tensor | None = None,
                within_width: torch.Tensor | None = None) -> torch.Tensor:
        """Predict z_0 from z_t (B, L, embed_dim) at (rescaled) timesteps (B,); with self-conditioning,
        `previous_z_0` is the last estimate (None: zeros, no estimate yet). `within_width` (B, L),
        True at the positions inside each sequence's own width: only those are attended to (None:
        every position, DiffuSeq)."""
        length = z_t.shape[1]
        dtype = self.lm_head.weight.dtype  # float32; bfloat16 when sampling with bf16 weights
        time = self.time_embed(timestep_embedding(timesteps, self.cfg.time_embed_dim).to(dtype))  # (B, hidden)
        positions = self.position_embedding.weight[:length]  # (L, hidden)
        inputs = z_t.to(dtype)
        if self.cfg.self_condition:
            previous = torch.zeros_like(inputs) if previous_z_0 is None else previous_z_0.to(dtype)
            inputs = torch.cat([inputs, previous], dim=-1)
        h = self.up_proj(inputs) + positions[None] + time[:, None, :]
        h = F.dropout(self.input_norm(h), self.cfg.dropout, self.training)
        attn_mask = None if within_width is None else within_width[:, None, None, :]  # (B, heads, queries, keys)
        for layer in self.layers:
            h = layer(h, attn_mask)
        if self.final_norm is not None:
            h = self.final_norm(h)
        return self.down_proj(h).to(z_t.dtype)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
