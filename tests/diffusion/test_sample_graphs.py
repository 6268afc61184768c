"""sample.cuda_graphs: the middle reverse steps replayed from a graph give the plain loop's tokens
and states. On a CPU the graphed path runs its buffers and body eagerly (nothing is recorded),
which is what these tests compare against the plain loop; the card's replay is measured by
`python -m diffusion.bench decode --set sample.cuda_graphs=true` (BENCHMARKS.md)."""

import dataclasses

import pytest
import torch

from diffusion import sample_graphs
from diffusion.model import Denoiser
from diffusion.sampling import sample_tokens
from diffusion.schedule import Schedule
from diffusion.solvers import SOLVERS
from helpers import decoding

MODES = [("target", "conditional", 1.0), ("full", "conditional", 1.0), ("full", "joint", 1.0), ("full", "conditional", 0.3)]


def final_states(monkeypatch, denoiser, batch, steps, target_lengths=None, **keys):
    """(tokens, the final z read out) of a decoding with graphs off and on, and the steps replayed."""
    ids, mask = batch
    read = []
    monkeypatch.setattr(denoiser, "logits", lambda z: (read.append(z.clone()), Denoiser.logits(denoiser, z))[1])
    replayed = []
    original = sample_graphs.GraphedStep.__call__

    def counting(self, step, *args):
        replayed.append(step)
        return original(self, step, *args)

    monkeypatch.setattr(sample_graphs.GraphedStep, "__call__", counting)
    runs = [(sample_tokens(denoiser, Schedule.named("sqrt", 200).respaced(steps), ids, mask,
                           decoding(cuda_graphs=graphs, **keys), generator=torch.Generator().manual_seed(1),
                           target_lengths=target_lengths),
             read[-1]) for graphs in (False, True)]
    return runs, replayed


@pytest.mark.parametrize("self_condition", [False, True])
@pytest.mark.parametrize("noising,full_mode,source_noise", MODES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_replayed_steps_give_the_plain_loops_tokens_and_states(monkeypatch, batch, denoiser, solver, noising, full_mode,
                                                               source_noise, self_condition):
    """Every solver (DDPM and DDIM with eta draw noise at every step), every noising mode (the
    conditional one draws the source's noise at every step), self-conditioning, and a clamp step
    inside the decode (steps with and without rounding: two graphs)."""
    if self_condition:
        torch.manual_seed(0)
        denoiser = Denoiser(dataclasses.replace(denoiser.cfg, self_condition=True)).eval()
    keys = dict(solver=solver, noising=noising, full_mode=full_mode, source_noise=source_noise, clamp_step=100,
                rounding="logits", eta=0.5 if solver == "ddim" else 0.0)
    ((plain_tokens, plain_z), (graphed_tokens, graphed_z)), replayed = final_states(monkeypatch, denoiser, batch, 10, **keys)
    assert replayed == list(range(8, 0, -1))  # the first (9) and the last step (0) run as the plain loop runs them
    assert torch.equal(graphed_z, plain_z)
    assert torch.equal(graphed_tokens, plain_tokens)


def test_replayed_steps_hold_predicted_lengths_as_the_plain_loop_does(monkeypatch, batch, denoiser):
    lengths = torch.tensor([1, 4, 7, 12])  # the target part (14 positions) full at 12
    ((plain_tokens, plain_z), (graphed_tokens, graphed_z)), replayed = final_states(
        monkeypatch, denoiser, batch, 10, lengths, solver="dpm++2m", rounding="logits", target_length="predicted")
    assert replayed == list(range(8, 0, -1))
    assert torch.equal(graphed_z, plain_z) and torch.equal(graphed_tokens, plain_tokens)
    assert (graphed_tokens[torch.arange(4), 11 + lengths] == 3).all()  # [SEP] where each length puts it


def test_a_decode_without_middle_steps_runs_the_plain_loop(monkeypatch, batch, denoiser):
    ((plain_tokens, _), (graphed_tokens, _)), replayed = final_states(monkeypatch, denoiser, batch, 2, solver="dpm++2m")
    assert replayed == [] and torch.equal(graphed_tokens, plain_tokens)


def test_the_key_is_off_by_default():
    assert decoding().sample.cuda_graphs is False
