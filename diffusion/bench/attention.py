"""Masked attention on this GPU, each SDPA backend against an fp32 reference (model.width_mask):
`python -m diffusion.bench attention` (GPU only; on a machine without one it says so and exits 2).

For key masks of the width mask's shape (B, 1, 1, L), bf16 q, k, v and batch widths L from 24 to
128: the output and the gradients of q, k and v from the default backend choice, cuDNN,
memory-efficient and math attention, and the default choice compiled, as ||x - ref|| / ||ref|| against math
attention in fp32 on the same inputs. bf16 lands near 1e-2 or below; a wrong kernel near 1.
Then the budget recipe's denoiser (random weights) with the width mask, on the GPU as training
runs it (bf16 autocast, eager and compiled) and as sampling runs it (bf16 weights), against the
same weights in fp32 on the CPU, at the in-width positions. One JSON line a length.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import ModelConfig
from ..model import SDPA_BACKENDS, Denoiser

NEEDS_GPU = 2  # the exit status where there is no CUDA GPU: nothing was checked

BACKENDS = {name: backends for name, backends in SDPA_BACKENDS.items() if name != "flash"}  # the masked ones


@torch.no_grad()
def denoiser_check(device: torch.device) -> None:
    """The budget recipe's denoiser with the width mask on the GPU against fp32 on the CPU."""
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
            reference = cpu(z, t, within_width=inside if masked else None)
            args = (z.to(device), t.to(device))
            kw = {"within_width": inside.to(device)} if masked else {}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                runs = {"autocast": gpu(*args, **kw), "autocast_compiled": compiled(*args, **kw)}
            runs["bf16_weights"] = bf16(*args, **kw)
            keep = inside[..., None].float()
            for name, out in runs.items():
                diff = (out.float().cpu() - reference) * keep
                row[f"{'masked' if masked else 'unmasked'}_{name}"] = float(diff.norm() / (reference * keep).norm())
        print(json.dumps(row), flush=True)


def attention(backends, q, k, v, mask):
    """Scaled dot-product attention, on `backends` alone (None: PyTorch's choice)."""
    if backends is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with sdpa_kernel(backends):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def errors(fn, q, k, v, mask, grad_out, reference) -> dict:
    """Relative errors of fn's output and of the gradients of q, k and v against `reference`."""
    inputs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    try:
        out = fn(*inputs, mask)
        out.backward(grad_out)
    except RuntimeError as err:  # a backend that refuses these inputs
        return {"error": str(err).splitlines()[0][:120]}
    got = [out, *(x.grad for x in inputs)]
    return {name: float((g.detach().float() - r).norm() / r.norm())
            for name, g, r in zip(("out", "dq", "dk", "dv"), got, reference)}


def backend_check(device: torch.device) -> None:
    """Each SDPA backend under key masks of the width mask's shape against math attention in fp32."""
    torch.manual_seed(0)
    compiled = torch.compile(lambda q, k, v, m: attention(None, q, k, v, m), dynamic=True)
    for length in (24, 40, 48, 64, 72, 128):
        q, k, v = (torch.randn(256, 8, length, 64, device=device, dtype=torch.bfloat16) for _ in range(3))
        widths = torch.randint(length // 2, length + 1, (256,), device=device)
        mask = (torch.arange(length, device=device) < widths[:, None])[:, None, None, :]
        grad_out = torch.randn_like(q)
        fp32_inputs = [x.float().requires_grad_() for x in (q, k, v)]
        fp32_out = attention([SDPBackend.MATH], *fp32_inputs, mask)
        fp32_out.backward(grad_out.float())
        reference = [fp32_out.detach(), *(x.grad for x in fp32_inputs)]
        row = {"L": length}
        for name, backends in BACKENDS.items():
            row[name] = errors(lambda *a, b=backends: attention(b, *a), q, k, v, mask, grad_out, reference)
        row["default_compiled"] = errors(compiled, q, k, v, mask, grad_out, reference)
        print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.bench attention", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("python -m diffusion.bench attention needs a CUDA GPU (torch sees none here): nothing checked",
              file=sys.stderr, flush=True)
        return NEEDS_GPU
    device = torch.device("cuda")
    backend_check(device)
    denoiser_check(device)
    return 0
