"""Masked attention on this GPU, each SDPA backend against an fp32 reference (model.width_mask).

    python env/device/attention_check.py

For key masks of the width mask's shape (B, 1, 1, L), bf16 q, k, v and batch widths L from 24 to
128: the output and the gradients of q, k and v from the default backend choice, cuDNN,
memory-efficient and math attention, and the default choice compiled, as ||x - ref|| / ||ref|| against math
attention in fp32 on the same inputs. bf16 lands near 1e-2 or below; a wrong kernel near 1.
Then the budget recipe's denoiser (random weights) with the width mask, on the GPU as training
runs it (bf16 autocast, eager and compiled) and as sampling runs it (bf16 weights), against the
same weights in fp32 on the CPU, at the in-width positions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import copy  # noqa: E402

from diffusion.config import ModelConfig  # noqa: E402
from diffusion.model import Denoiser  # noqa: E402


@torch.no_grad()
def denoiser_check(device) -> None:
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=8192, embed_dim=128, hidden_size=512, num_layers=8, num_heads=8, ffn_size=2048,
                      dropout=0.0, width_mask=True)
    cpu = Denoiser(cfg).eval()
    gpu = copy.deepcopy(cpu).to(device)
    compiled = torch.compile(gpu, dynamic=True)
    bf16 = copy.deepcopy(cpu).to(device).to(torch.bfloat16)
    bf16.use_gelu_epilogue(True)
    for length in (24, 48, 64, 128):
        z, t = torch.randn(64, length, 128), torch.rand(64) * 1000
        widths = torch.randint(length // 2, length + 1, (64,))
        inside = torch.arange(length) < widths[:, None]
        row = {"denoiser_L": length}
        for masked in (False, True):
            ref = cpu(z, t, within_width=inside if masked else None)
            args = (z.to(device), t.to(device))
            kw = {"within_width": inside.to(device)} if masked else {}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                runs = {"autocast": gpu(*args, **kw), "autocast_compiled": compiled(*args, **kw)}
            runs["bf16_weights"] = bf16(*args, **kw)
            keep = inside[..., None].float()
            for name, out in runs.items():
                diff = (out.float().cpu() - ref) * keep
                row[f"{'masked' if masked else 'unmasked'}_{name}"] = float(diff.norm() / (ref * keep).norm())
        print(json.dumps(row), flush=True)


def attention(backends, q, k, v, mask):
    if backends is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with sdpa_kernel(backends):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def errors(fn, q, k, v, mask, grad_out, reference) -> dict:
    inputs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    try:
        out = fn(*inputs, mask)
        out.backward(grad_out)
    except RuntimeError as err:
        return {"error": str(err).splitlines()[0][:120]}
    got = [out, *(x.grad for x in inputs)]
    return {name: float((g.float() - r).norm() / r.norm()) for name, g, r in zip(("out", "dq", "dk", "dv"), got, reference)}


def main() -> int:
    device = torch.device("cuda")
    torch.manual_seed(0)
    ways = {"default": None, "cudnn": [SDPBackend.CUDNN_ATTENTION], "efficient": [SDPBackend.EFFICIENT_ATTENTION],
            "math": [SDPBackend.MATH]}
    compiled = torch.compile(lambda q, k, v, m: attention(None, q, k, v, m), dynamic=True)
    for length in (24, 40, 48, 64, 72, 128):
        q, k, v = (torch.randn(256, 8, length, 64, device=device, dtype=torch.bfloat16) for _ in range(3))
        widths = torch.randint(length // 2, length + 1, (256,), device=device)
        mask = (torch.arange(length, device=device) < widths[:, None])[:, None, None, :]
        grad_out = torch.randn_like(q)
        ref_in = [x.float().requires_grad_() for x in (q, k, v)]
        ref_out = attention([SDPBackend.MATH], *ref_in, mask)
        ref_out.backward(grad_out.float())
        reference = [ref_out.detach(), *(x.grad for x in ref_in)]
        row = {"L": length}
        for name, backends in ways.items():
            row[name] = errors(lambda *a, b=backends: attention(b, *a), q, k, v, mask, grad_out, reference)
        row["default_compiled"] = errors(compiled, q, k, v, mask, grad_out, reference)
        print(json.dumps(row), flush=True)
    denoiser_check(device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
