"""The loss-aware timestep sampler behaves as DiffuSeq's LossSecondMomentResampler."""

import numpy as np
import torch

from diffusion.timesteps import LossAwareSampler, UniformSampler


class ReferenceResampler:
    """DiffuSeq's algorithm, one loss at a time on the host."""

    def __init__(self, num_steps, history=10, uniform_prob=0.001):
        self.history_len, self.uniform_prob = history, uniform_prob
        self.history = np.zeros([num_steps, history], dtype=np.float64)
        self.counts = np.zeros([num_steps], dtype=int)

    def update(self, ts, losses):
        for t, loss in zip(ts, losses):
            if self.counts[t] == self.history_len:
                self.history[t, :-1] = self.history[t, 1:]
                self.history[t, -1] = loss
            else:
                self.history[t, self.counts[t]] = loss
                self.counts[t] += 1

    def weights(self):
        if not (self.counts == self.history_len).all():
            return np.ones([len(self.counts)], dtype=np.float64) / len(self.counts)
        w = np.sqrt(np.mean(self.history**2, axis=-1))
        w /= np.sum(w)
        w *= 1 - self.uniform_prob
        w += self.uniform_prob / len(w)
        return w


def test_lossaware_matches_diffuseq_reference_with_repeated_timesteps():
    rng = np.random.default_rng(0)
    ours, ref = LossAwareSampler(7), ReferenceResampler(7)
    for round_ in range(40):
        # few timesteps, large batches: many repeats of a timestep in one update, some over the history length
        ts = rng.integers(0, 7, size=int(rng.integers(1, 30)))
        losses = rng.random(len(ts)) * (1 + round_)
        ours.update(torch.tensor(ts), torch.tensor(losses))
        ref.update(ts, losses)
        np.testing.assert_allclose(ours.probabilities().numpy(), ref.weights(), rtol=1e-12)


def test_lossaware_is_uniform_until_warm_and_weights_are_importance_weights():
    s = LossAwareSampler(50)
    torch.testing.assert_close(s.probabilities(), torch.full((50,), 1 / 50, dtype=torch.float64))
    s.update(torch.arange(50).repeat(10), torch.linspace(0.1, 5.0, 50).repeat(10))
    p = s.probabilities()
    assert p[-1] > p[0] * 10  # high-loss timesteps are sampled more
    torch.manual_seed(0)
    t, w = s.sample(1000)
    torch.testing.assert_close(w, (1 / (50 * p[t])).float())


def test_a_non_finite_loss_leaves_the_sampler_uniform_and_able_to_sample():
    # a diverged step records nan or inf; the trainer's next log line says so, if sampling survives
    for bad in (float("nan"), float("inf")):
        s = LossAwareSampler(50)
        s.update(torch.arange(50).repeat(10), torch.linspace(0.1, 5.0, 50).repeat(10))
        s.update(torch.tensor([3]), torch.tensor([bad]))
        torch.testing.assert_close(s.probabilities(), torch.full((50,), 1 / 50, dtype=torch.float64))
        t, w = s.sample(100)
        assert ((0 <= t) & (t < 50)).all() and (w == 1).all()


def test_state_round_trip():
    s = LossAwareSampler(5)
    s.update(torch.tensor([0, 1, 1, 4]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    t = LossAwareSampler(5)
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.losses, s.losses) and torch.equal(t.counts, s.counts)


def test_uniform_sampler_covers_range():
    torch.manual_seed(0)
    t, w = UniformSampler(10).sample(5000)
    assert set(t.tolist()) == set(range(10)) and (w == 1).all()
