"""The whole training step replayed from CUDA graphs (train.cuda_graphs), one graph per batch width.

A step of the budget recipe's small model launches hundreds of kernels from the host, and the
card waits between them (BENCHMARKS.md measures what replaying them saves). Here one step, from the
micro-batch's gather out of the device-resident data to the optimizer's update, is

    gather (input_ids, input_mask) -> timesteps -> loss terms -> sampler history -> backward
    -> clip the gradients' norm -> AdamW -> the log window's sums

and all of it is captured once per batch width (trimmed batches come in a few widths, multiples
of 8) and replayed after. A step then costs the host a copy of the batch's indices into the
graph's input, the replay, the learning rate's update and the EMA's.

The arithmetic is the plain step's (train.train_step), in the same order with the same random
draws; what differs is bookkeeping the graph needs: the learning rate is a tensor on the card,
which the scheduler fills, the optimizer is capturable, the gradients are written afresh a step
instead of being zeroed and added to, and DeepSpeed's engine is stepped around (at ZeRO-0 on one
rank it only calls the optimizer and the scheduler, which this does itself). A width is captured
the third time it comes; its first two steps run eagerly, on a side stream, so that compiling,
cuBLAS's workspaces and the optimizer's state are in place before anything is recorded.

On a CPU nothing is captured: the same step runs eagerly, which is how the tests check it against
the plain step.
"""

from __future__ import annotations

from collections import Counter

import torch

from .batches import BatchStream
from .train_log import LossWindow

EAGER_STEPS = 2  # steps a width runs eagerly before it is captured


class GraphedStep:
    """Call it to take one optimizer step (one micro-batch) and add its losses to `window`."""

    def __init__(self, run, batches: BatchStream, window: LossWindow, capture: bool):
        self.run, self.batches, self.window = run, batches, window
        self.objective = run.engine.module
        self.optimizer = run.engine.optimizer  # at ZeRO-0 without fp16/bf16 wrappers: the AdamW built
        self.capture = capture
        device = batches.device
        # the update reads the rate as the plain step's does: fused on the card in fp32, on the CPU
        # as a Python float (double)
        lr_dtype = torch.float32 if device.type == "cuda" else torch.float64
        for group in self.optimizer.param_groups:
            # a tensor on the card, read by the captured update and filled by the scheduler between steps
            group["lr"] = torch.tensor(float(group["lr"]), dtype=lr_dtype, device=device)
            group["capturable"] = capture
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.graph_index: dict[int, torch.Tensor] = {}  # the captured input of each width's graph
        self.eager_steps: Counter = Counter()
        # the graphs share one memory pool: nothing a graph allocates outlives its replay (the
        # parameters, optimizer state, sampler history and log sums are all allocated outside)
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.side_stream = torch.cuda.Stream(device) if capture else None

    def body(self, index: torch.Tensor, width: int) -> None:
        """The step itself: what the graphs record, and what runs eagerly."""
        run = self.run
        input_ids, input_mask = self.batches.gather(index, width)
        t, weights = run.sampler.sample(input_ids.shape[0])
        terms = self.objective(input_ids, input_mask, t)
        run.sampler.update(t, terms["loss"])
        (terms["loss"] * weights).mean().backward()
        if run.clip_norm:
            torch.nn.utils.clip_grad_norm_(run.clipped, run.clip_norm)
        self.optimizer.step()
        self.window.accumulate(terms, input_ids)

    def __call__(self) -> None:
        index, width = self.batches.next_index()
        if width in self.graphs:
            self.graph_index[width].copy_(index)
            self.graphs[width].replay()
        elif self.capture and self.eager_steps[width] >= EAGER_STEPS:
            self._capture(index, width).replay()
        else:
            self._eager(index, width)
        self.window.count(index.numel() * width)
        self.run.lr_schedule.step()

    def _eager(self, index: torch.Tensor, width: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.side_stream is None:
            self.body(index, width)
        else:
            self.side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side_stream):
                self.body(index, width)
            torch.cuda.current_stream().wait_stream(self.side_stream)
        self.eager_steps[width] += 1

    def _capture(self, index: torch.Tensor, width: int) -> torch.cuda.CUDAGraph:
        """Record `width`'s step (nothing runs while it records)."""
        self.graph_index[width] = index.clone()
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward writes its own gradients
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.body(self.graph_index[width], width)
        self.graphs[width] = graph
        return graph
