"""Fixtures of the sampling and noising tests: a batch of 4 sequences (source positions 0-9,
target 10-23) and a tiny untrained denoiser."""

import pytest
import torch

from diffusion.config import ModelConfig
from diffusion.model import Denoiser


@pytest.fixture()
def batch():
    torch.manual_seed(0)
    ids = torch.randint(4, 60, (4, 24))
    mask = torch.zeros(4, 24, dtype=torch.long)
    mask[:, 10:] = 1  # positions 0..9: source, 10..23: target
    return ids, mask


@pytest.fixture()
def denoiser():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=60, embed_dim=64, hidden_size=32, num_layers=1, num_heads=2, ffn_size=64,
                      max_positions=24, dropout=0.0)
    return Denoiser(cfg).eval()
