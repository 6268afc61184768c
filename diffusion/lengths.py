"""Target lengths fixed before sampling (sample.target_length: predicted).

DiffuSeq lets the model end a target with PAD. A position whose estimate is unsure often rounds to
PAD, the likeliest token of the target part's tail, so its word drops out of the decoded text: the
budget recipe's outputs came out a quarter shorter than the references, and the shortfall grew
with the source (QUALITY.md). A length fixed beforehand holds the target's [SEP] and PADs in place
and lets the positions before them hold text only. A model trained with that end clean
(diffusion.clean_target_end) is told the length outright, at every noise level.

The length a source of n tokens gets is the median target length of the training pairs whose
source has n tokens (as the trainer saw them, trimmed): a table the trainer writes into every
checkpoint (manifest.TARGET_LENGTHS), so that a checkpoint samples without its training data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from . import atomic
from .data import CLS, PAD, SEP, source_part
from .manifest import TARGET_LENGTHS, CheckpointError


def source_lengths(input_mask: torch.Tensor) -> torch.Tensor:
    """(N,) the source's tokens in each encoded sequence: its mask-0 part less [CLS] x [SEP] [SEP]'s three."""
    return source_part(input_mask) - 3


def target_lengths(input_ids: torch.Tensor, input_mask: torch.Tensor) -> torch.Tensor:
    """(N,) the target's tokens in each encoded sequence: its mask-1 part's non-PAD tokens less [CLS] and [SEP]."""
    return ((input_mask == 1) & (input_ids != PAD)).sum(-1) - 2


def length_table(input_ids: torch.Tensor, input_mask: torch.Tensor) -> list[int]:
    """Entry n: the median target length (the lower middle value) of the sequences whose source
    has n tokens, for n from 0 to the longest source; a source length no sequence has takes the
    entry of the nearest one that has (the shorter one on a tie)."""
    sources, targets = source_lengths(input_mask), target_lengths(input_ids, input_mask)
    if len(sources) == 0:
        raise ValueError("no sequences to count target lengths from")
    seen = {n: int(targets[sources == n].median()) for n in sources.unique().tolist()}
    known = sorted(seen)
    return [seen[min(known, key=lambda k: (abs(k - n), k))] for n in range(known[-1] + 1)]


def save_table(table: list[int], folder: Path) -> None:
    atomic.write_json(Path(folder) / TARGET_LENGTHS, {"by_source_length": table})


def load_table(folder: Path) -> list[int]:
    """A checkpoint's table; CheckpointError when it has none (written before sample.target_length existed)."""
    path = Path(folder) / TARGET_LENGTHS
    if not path.is_file():
        raise CheckpointError(f"{path}: missing: this checkpoint was written before the trainer counted target "
                              "lengths; sample it with sample.target_length: learned, or train it again")
    try:
        table = json.loads(path.read_text())["by_source_length"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: corrupt ({type(err).__name__}: {err})") from None
    if not table or not all(isinstance(n, int) for n in table):
        raise CheckpointError(f"{path}: corrupt (by_source_length must be a list of whole numbers)")
    return table


def predicted_lengths(table: list[int], sources: torch.Tensor, offset: int, room: torch.Tensor) -> torch.Tensor:
    """(N,) the target length of each sequence: the table's entry for its source length (the last
    entry past the table's end) plus `offset`, at least 1 and at most `room`, the tokens its
    target part holds besides [CLS] and [SEP]."""
    entries = torch.tensor(table, dtype=torch.long)[sources.clamp(0, len(table) - 1)]
    return torch.minimum(entries + offset, room).clamp(min=1)


def ends_a_target(ids: torch.Tensor) -> torch.Tensor:
    """Whether each token is one of a target's end: its [SEP] or a PAD after it (a target's own
    tokens are text, its [CLS] comes first)."""
    return (ids == SEP) | (ids == PAD)


def target_end(input_ids: torch.Tensor, input_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: each target's end, its [SEP] and the PADs after it (diffusion.clean_target_end)."""
    return (input_mask == 1) & ends_a_target(input_ids)


class HeldLayout(NamedTuple):
    """Where targets of lengths fixed beforehand have text and what they hold elsewhere, (B, L) each."""

    text: torch.Tensor  # bool: the positions that choose text tokens only
    held: torch.Tensor  # the token held at each other target position, -1 where the sampler chooses

    @property
    def end(self) -> torch.Tensor:
        """(B, L) bool: each target's end, its [SEP] and the PADs after it (`target_end`'s positions)."""
        return ends_a_target(self.held)


def held_layout(input_mask: torch.Tensor, lengths: torch.Tensor) -> HeldLayout:
    """The layout of targets of `lengths` (B,) tokens: text at the `lengths` positions after each
    target's [CLS]; [CLS], then [SEP], then PAD to the end held; the source the sampler's."""
    positions = torch.arange(input_mask.shape[-1], device=input_mask.device)
    target_cls = source_part(input_mask)[:, None]
    last_text = target_cls + lengths.to(input_mask.device)[:, None]
    text = (positions > target_cls) & (positions <= last_text)
    held = torch.full_like(input_mask, -1)
    held = held.masked_fill(positions == target_cls, CLS).masked_fill(positions == last_text + 1, SEP)
    return HeldLayout(text, held.masked_fill(positions > last_text + 1, PAD))
