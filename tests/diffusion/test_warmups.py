"""The warm-ups of a short run: the EMA's rate and the learning rate."""

import math

import torch

from diffusion.ema import EMA


def test_ema_warmup_follows_its_formula():
    module = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(0.0)
    ema = EMA(module, rate=0.99, warmup=True)
    assert [round(ema.rate_at(n), 6) for n in (1, 2, 10, 1000)] == [round(2 / 11, 6), 0.25, round(11 / 20, 6), 0.99]
    shadow = 0.0
    for step in range(1, 6):
        with torch.no_grad():
            module.weight.fill_(float(step))
        ema.update(step)
        rate = min(0.99, (1 + step) / (10 + step))
        shadow = rate * shadow + (1 - rate) * step
        assert math.isclose(ema.shadow[0].item(), shadow, rel_tol=1e-6)
    assert EMA(module, rate=0.99).rate_at(1) == 0.99  # without warm-up: the rate throughout


def test_learning_rate_warmup_then_the_schedule():
    from dataclasses import replace

    from diffusion.config import Config, TrainConfig
    from diffusion.train import learning_rate_factor

    cfg = Config(train=TrainConfig(steps=100, warmup_steps=10))
    factor = learning_rate_factor(cfg)
    # (step + 1) / 10 during the warm-up, times DiffuSeq's linear decay 1 - step / 100
    assert [round(factor(s), 6) for s in (0, 4, 9, 50)] == [0.1, 0.5 * 0.96, 0.91, 0.5]
    plain = learning_rate_factor(replace(cfg, train=replace(cfg.train, warmup_steps=0)))
    assert plain(0) == 1.0 and plain(50) == 0.5
