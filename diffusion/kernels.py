"""A fused GPU kernel (Triton) for the rounding step of sampling.

`nearest_embedding(z, embedding, offsets)`: for each row of z (N, D), argmax_v (2 z.e_v - o_v),
the nearest word embedding (L2) or the decoder's argmax by the offsets o_v that
sampling.rounding_offsets makes. Each program takes BLOCK_M rows, walks the
vocabulary in tiles of BLOCK_V embeddings, scores a tile with one bf16 matmul (fp32
accumulation) and keeps a running max and argmax: the (N, V) score matrix is never written to
memory, which made the unfused rounding cost a third of a reverse step.

Only imported on CUDA machines with Triton (sampling.nearest_embedding falls back to torch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _nearest_embedding_kernel(z_ptr, table_ptr, sq_norms_ptr, out_ptr, n_rows, vocab: tl.constexpr,
                              D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D)
    z = tl.load(z_ptr + rows[:, None] * D + dims[None, :], mask=rows[:, None] < n_rows, other=0.0)  # (BLOCK_M, D)
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_id = tl.zeros((BLOCK_M,), tl.int32)
    for start in range(0, vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        e = tl.load(table_ptr + cols[:, None] * D + dims[None, :], mask=cols[:, None] < vocab, other=0.0)  # (BLOCK_V, D)
        sq_norms = tl.load(sq_norms_ptr + cols, mask=cols < vocab, other=float("inf"))
        scores = 2.0 * tl.dot(z, tl.trans(e), out_dtype=tl.float32) - sq_norms[None, :]  # (BLOCK_M, BLOCK_V)
        tile_best = tl.max(scores, axis=1)
        tile_id = tl.argmax(scores, axis=1).to(tl.int32) + start
        better = tile_best > best  # strict: the first of equal scores wins, as torch.argmax
        best = tl.where(better, tile_best, best)
        best_id = tl.where(better, tile_id, best_id)
    tl.store(out_ptr + rows, best_id.to(tl.int64), mask=rows < n_rows)


# One tiling, not an autotuner's pick: autotuning seven tilings cost every fresh sampling process
# more seconds than the kernel's whole share of a decode. This one is what the autotuner chose on an
# H100 for the budget model (D 128, vocabulary 8k); `python -m diffusion.bench sample` times the kernel.
TILES = dict(BLOCK_M=64, BLOCK_V=128, num_warps=4, num_stages=3)


def supported(dim: int) -> bool:
    return dim >= 16 and dim & (dim - 1) == 0  # tl.dot and tl.arange need a power of two >= 16


def nearest_embedding(z: torch.Tensor, embedding: torch.Tensor, offsets: torch.Tensor,
                      dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Token ids (...,) of the rows of `embedding` (V, D) best scored for z (..., D): argmax_v
    2 z.e_v - offsets_v (V,), the offsets of sampling.rounding_offsets; scores in `dtype` x
    `dtype` -> fp32."""
    dim = z.shape[-1]
    flat = z.reshape(-1, dim).to(dtype).contiguous()
    table = embedding.detach().to(dtype).contiguous()
    sq_norms = offsets.detach().float().contiguous()
    ids = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
    grid = (triton.cdiv(flat.shape[0], TILES["BLOCK_M"]),)
    _nearest_embedding_kernel[grid](flat, table, sq_norms, ids, flat.shape[0], table.shape[0], D=dim, **TILES)
    return ids.view(z.shape[:-1])
