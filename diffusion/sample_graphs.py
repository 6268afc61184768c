"""A decode's middle reverse steps replayed from one CUDA graph (sample.cuda_graphs).

A few-step decode of a small model is bound by the host: every reverse step launches some seventy
kernels, and the card finishes them sooner than Python issues them (BENCHMARKS.md). Here a batch's
first step runs as usual (it warms every kernel up and starts the solver's history), the steps
between the first and the last replay one graph recorded once, and the last runs as usual (most
solvers return the estimate there: another formula).

The recorded step reads and writes buffers that stay in place: the state (z, the denoiser's last
estimate, the solver's history), the step index t, the solver's numbers (a row of the decode's
table, copied on the card) and the step's noise, drawn before each replay from the batch's
generators in the shapes and order the plain step draws it. The arithmetic is the plain step's,
kernel for kernel, so the tokens are the plain loop's. Steps with and without rounding
(sample.clamp_step) are two graphs.

On a CPU nothing is recorded: the same buffers and body run eagerly, which is how the tests check
this path against the plain loop.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

REPLAYED_FROM = 3  # decodes of fewer steps have no middle step to replay


class RecordedNoise:
    """The plain draws, remembering what each was shaped like."""

    def __init__(self, randn_like):
        self.randn_like, self.likes = randn_like, []

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        self.likes.append(like)
        return self.randn_like(like)


class ReplayedNoise:
    """The recorded step's draws: buffers filled before each replay, handed out in the order the step asks."""

    def __init__(self, likes: list[torch.Tensor]):
        self.buffers = [torch.empty_like(like) for like in likes]
        self.taken = 0

    def draw(self, randn_like) -> None:
        """Fresh noise into every buffer, as the plain step would draw it."""
        for buffer in self.buffers:
            buffer.copy_(randn_like(buffer))

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        buffer = self.buffers[self.taken]
        assert buffer.shape == like.shape, "the step draws other noise than its first step drew"
        self.taken += 1
        return buffer


class GraphedStep:
    """The middle steps of one batch's decode, from `state` after its first step."""

    def __init__(self, reverse, state, noise_likes: list[torch.Tensor], num_coefficients: int, capture: bool):
        self.reverse, self.capture = reverse, capture
        # the state the recorded step reads and writes, allocated outside any graph
        self.state = type(state)(*(None if x is None else x.clone() for x in state))
        device = state.z.device
        self.t = torch.empty(len(state.z), dtype=torch.long, device=device)
        self.coefficients = torch.empty(num_coefficients, dtype=torch.float32, device=device)
        self.noise = ReplayedNoise(noise_likes)
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}  # by whether the step rounds

    def __call__(self, step: int, coefficients: torch.Tensor, randn_like) -> None:
        self.t.fill_(step)
        self.coefficients.copy_(coefficients)
        self.noise.draw(randn_like)
        if not self.capture:
            self._body(step)
            return
        rounds = self.reverse.rounds(step)
        if rounds not in self.graphs:
            # capture_begin/end rather than torch.cuda.graph(), which synchronises, collects garbage and
            # empties the allocator's cache before each capture: costs a fresh capture per batch would pay
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin()
            try:
                self._body(step)
            finally:
                graph.capture_end()
            self.graphs[rounds] = graph
        self.graphs[rounds].replay()

    def _body(self, step: int) -> None:
        self.noise.taken = 0
        after = self.reverse.body(self.state, step, self.t, self.noise, tuple(self.coefficients.unbind()))
        for buffer, value in zip(self.state, after):
            if buffer is not None:
                buffer.copy_(value)


def replay_steps(reverse, state, steps: list[int], randn_like):
    """The state after `steps` (at least REPLAYED_FROM, in decoding order) from `state`: the first
    and the last run as `reverse` runs them, the others from a graph on a CUDA device."""
    device = state.z.device
    capture = device.type == "cuda"
    middle = steps[1:-1]
    # the decode's table of the solver's numbers, one row a middle step, on the card before anything runs
    table = torch.tensor([reverse.solver.coefficients(reverse.schedule, step) for step in middle],
                         dtype=torch.float32).to(device)
    side = torch.cuda.Stream(device) if capture else None  # graphs are recorded off the default stream
    if capture:
        side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side) if capture else nullcontext():
        recorded = RecordedNoise(randn_like)
        state = reverse(state, steps[0], recorded)  # on the recording stream: every lazy set-up is done before it records
        graphed = GraphedStep(reverse, state, recorded.likes, table.shape[1], capture)
        for row, step in enumerate(middle):
            graphed(step, table[row], randn_like)
        state = reverse(graphed.state, steps[-1], randn_like)
        if capture:
            side.synchronize()  # the graphs' memory returns to the allocator with them: nothing may still run in it
    if capture:
        torch.cuda.current_stream(device).wait_stream(side)
    return state
