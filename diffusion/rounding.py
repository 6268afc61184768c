"""How a step's z_0 prediction is rounded (from t >= sample.clamp_step on): one class a rounding,
registered by name in ROUNDINGS.

- l2 (DiffuSeq's clamping): the nearest word embedding;
- logits: the embedding of the decoder's argmax, lm_head(z_0), as the final read-out chooses;
- soft: no token at all but the decoder's expected embedding under softmax(lm_head(z_0) / T).

Every rounding lowers PAD's score by sample.pad_penalty, and one that picks tokens gives the first
sample.min_target_tokens target positions text tokens only and, with target lengths fixed
beforehand (sample.target_length: predicted), holds each target's [CLS], [SEP] and PADs in place
and gives the positions between them text only; the read-out (argmax of lm_head at the end) does
the same. Importing this module needs no torch: the config's rules come from here;
the tensor work is sampling.py's.
"""

from __future__ import annotations

import typing

from .config import Config, RoundingName, SampleConfig, require


class Rounding:
    name = ""
    picks_tokens = True  # rounds to a token's embedding (min_target_tokens can then insist on text)
    reads_temperature = False
    uses_bias = True  # scores with the decoder (lm_head's bias), not by L2 distance

    def __init__(self, denoiser, sample: SampleConfig, input_mask, layout=None):
        from .sampling import first_target_positions, rounding_offsets

        self.denoiser, self.sample = denoiser, sample
        self.embedding = denoiser.word_embedding.weight
        self.bias = denoiser.lm_head.bias if self.uses_bias else None
        k = sample.min_target_tokens
        # the positions that must hold text, at every rounding and in the read-out
        self.text_at = first_target_positions(input_mask, k) if k else None
        # with lengths fixed beforehand (a lengths.HeldLayout): (B, L) text-only positions, and the
        # tokens held elsewhere in the target
        self.text, self.held = (None, None) if layout is None else layout
        if self.picks_tokens:  # the scores' per-token offsets, once for every step
            self.offsets = rounding_offsets(self.embedding, self.bias, sample.pad_penalty)
            self.text_offsets = (rounding_offsets(self.embedding, self.bias, sample.pad_penalty, text_only=True)
                                 if k or self.text is not None else None)

    @classmethod
    def check(cls, cfg: Config) -> None:
        s = cfg.sample
        picking = " or ".join(n for n, c in ROUNDINGS.items() if c.picks_tokens)
        require(not s.min_target_tokens or cls.picks_tokens, "sample.min_target_tokens",
                f"needs a rounding that picks tokens ({picking}), not {cls.name}")
        require(s.target_length == "learned" or cls.picks_tokens, "sample.target_length",
                f"{s.target_length} needs a rounding that picks tokens ({picking}), not {cls.name}")
        require(s.soft_temperature == 1 or cls.reads_temperature, "sample.soft_temperature",
                f"is read by rounding soft only (sample.rounding is {cls.name!r})")

    def __call__(self, predicted_z_0):
        """The rounded z_0 (an embedding)."""
        return self.denoiser.embed(self.tokens(predicted_z_0)).float()

    def tokens(self, predicted_z_0):
        """The token of each position, with text at the first target positions where asked, and
        the fixed lengths' text and held tokens."""
        from .sampling import nearest_embedding

        ids = nearest_embedding(predicted_z_0, self.embedding, offsets=self.offsets)
        if self.text_at is not None:
            at = predicted_z_0.gather(1, self.text_at[..., None].expand(-1, -1, predicted_z_0.shape[-1]))  # (B, k, D)
            ids = ids.scatter(1, self.text_at, nearest_embedding(at, self.embedding, offsets=self.text_offsets))
        if self.text is not None:  # every row's text positions differ in number: scored in full, kept where they are
            ids = nearest_embedding(predicted_z_0, self.embedding, offsets=self.text_offsets).where(self.text, ids)
            ids = self.held.where(self.held >= 0, ids)
        return ids


class L2Rounding(Rounding):
    name, uses_bias = "l2", False


class LogitsRounding(Rounding):
    name = "logits"


class SoftRounding(Rounding):
    name, picks_tokens, reads_temperature = "soft", False, True

    def __call__(self, predicted_z_0):
        from .sampling import soft_embedding

        return soft_embedding(predicted_z_0, self.embedding, self.bias, self.sample.soft_temperature,
                              self.sample.pad_penalty)


ROUNDINGS: dict[str, type[Rounding]] = {cls.name: cls for cls in (L2Rounding, LogitsRounding, SoftRounding)}
assert set(ROUNDINGS) == set(typing.get_args(RoundingName)), "a rounding without its class, or a class without its name"
