"""Noising modes: what happens to the source positions, in training and in sampling. The study's
central variable, one class a mode, registered by name in NOISING.

- target (DiffuSeq's partial noising): only the target is noised; the source positions of z_t
  stay the clean z_0 in training and the clean embedding at every reverse step: the condition.
- full (dual noising): source and target are noised together. The source gets `source_noise` of
  the target's noise variance (1: the same level, the report's full noising). In sampling,
  `conditional` puts the clean source back at each step, forward-diffused to that step's level
  (fresh noise), while the target is denoised; `joint` denoises both from pure noise.

Importing this module needs no torch: the config's rules (which keys a mode reads) come from here.
"""

from __future__ import annotations

import typing

from .config import Config, DiffusionConfig, NoisingName, SampleConfig, require


def keep_source(z_t, z_source, input_mask):
    """z_t with the source positions (mask 0) replaced by z_source."""
    return z_source.where(input_mask[..., None] == 0, z_t)


class Noising:
    name = ""
    label = ""  # the report's name for a model trained so, the row label of its tables
    noises_source = False  # whether the source positions are noised (the anchor loss covers them then)

    def __init__(self, diffusion: DiffusionConfig, sample: SampleConfig | None = None):
        self.source_noise = diffusion.source_noise
        self.full_mode = (sample or SampleConfig()).full_mode

    @classmethod
    def check(cls, cfg: Config) -> None:
        """The config rules of this mode (ConfigError naming the key)."""

    def training_z_t(self, schedule, z_0, z_t, t, noise, input_mask):
        """z_t as training sees it, from z_t = q_sample(z_0, t, noise) at every position."""
        raise NotImplementedError

    def start(self, z, embedding, input_mask):
        """The reverse process's first state, from pure noise z."""
        return z

    def before_step(self, schedule, z, embedding, t, input_mask, randn_like):
        """The state the denoiser sees at step t."""
        return z

    def after_step(self, z, embedding, input_mask):
        """The state after the solver's step."""
        return z


class TargetNoising(Noising):
    name, label = "target", "DiffuSeq"

    @classmethod
    def check(cls, cfg: Config) -> None:
        require(cfg.diffusion.source_noise == 1, "diffusion.source_noise",
                f"is read by full noising only (diffusion.noising is {cls.name!r})")

    def training_z_t(self, schedule, z_0, z_t, t, noise, input_mask):
        return keep_source(z_t, z_0, input_mask)

    def start(self, z, embedding, input_mask):
        return keep_source(z, embedding, input_mask)

    def after_step(self, z, embedding, input_mask):
        return keep_source(z, embedding, input_mask)


class FullNoising(Noising):
    name, label, noises_source = "full", "Full-Noised", True

    @classmethod
    def check(cls, cfg: Config) -> None:
        require(cfg.diffusion.source_noise == 1 or cfg.sample.full_mode == "conditional", "diffusion.source_noise",
                f"{cfg.diffusion.source_noise} needs sample.full_mode conditional: joint sampling denoises source and "
                "target at one level")

    def training_z_t(self, schedule, z_0, z_t, t, noise, input_mask):
        if self.source_noise == 1:
            return z_t
        return keep_source(z_t, schedule.q_sample_share(z_0, t, noise, self.source_noise), input_mask)

    def before_step(self, schedule, z, embedding, t, input_mask, randn_like):
        if self.full_mode == "joint":
            return z
        return keep_source(z, schedule.q_sample_share(embedding, t, randn_like(embedding), self.source_noise), input_mask)


NOISING: dict[str, type[Noising]] = {cls.name: cls for cls in (TargetNoising, FullNoising)}
assert set(NOISING) == set(typing.get_args(NoisingName)), "a noising mode without its class, or a class without its name"


def noising_mode(diffusion: DiffusionConfig, sample: SampleConfig | None = None) -> Noising:
    return NOISING[diffusion.noising](diffusion, sample)
