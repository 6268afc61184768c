"""Paraphrase data in DiffuSeq's format: loading, the BPE vocabulary, and encoded sequences.

A pair becomes one sequence `[CLS] x [SEP] [SEP] [CLS] y [SEP] [PAD]...` of exactly `seq_len`
tokens, with `input_mask` 0 over the source part and 1 over the target part (PADs included), as
DiffuSeq's `helper_tokenize` builds it. The model only ever noises where the mask is 1.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from . import atomic
from .config import MIN_SEQ_LEN
from .pairs import DataError, check_pairs_file  # noqa: F401  (DataError: raised by this module too)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
PAD, UNK, CLS, SEP = range(4)

def load_pairs(path: str | Path, limit: int | None = None) -> list[dict]:
    """Paraphrase pairs from DiffuSeq-format jsonl ({"src": str, "trg": str} a line), first `limit`."""
    import datasets

    # Check every line first: the Arrow JSON reader behind `datasets` reports a bad line
    # without its number, and it parses the whole file whatever `limit` is.
    count = check_pairs_file(path)
    if count == 0:
        return []
    datasets.disable_progress_bars()
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    ds = ds.select_columns(["src", "trg"])
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds.to_list()


def train_tokenizer(texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> Tokenizer:
    """A BPE vocabulary whose decoded text reads like DiffuSeq's decoded BERT text: words and
    punctuation marks separated by single spaces. Special tokens take ids 0..3.

    Word starts are marked with a Metaspace "▁" rather than an end-of-word suffix: the trainer
    numbers suffixed tokens in hash-map order, so with a suffix two runs on the same text give
    different ids and even different merges (huggingface/tokenizers#1794); this way is deterministic.
    """
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Metaspace(prepend_scheme="always", split=False)]
    )
    tok.decoder = decoders.Metaspace(prepend_scheme="always", split=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    atomic.write_text(path, tok.to_str())


def load_tokenizer(path: str | Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for missing and bad files
        raise DataError(f"{path}: cannot load tokenizer: {err}") from None


def build_sequence(src_ids: list[int], trg_ids: list[int], seq_len: int,
                   target_budget: Callable[[int], int] | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, input_mask) of `[CLS] x [SEP] [SEP] [CLS] y [SEP] [PAD]...`, seq_len long.

    Too long a pair loses tokens from the end of its longer side, one at a time, and from both
    sides when they are equally long, exactly as DiffuSeq's merge_and_mask does (so a tie can
    leave one more PAD than needed). The closing [SEP] of each side is always kept. With
    `target_budget` (trimmed sequences), the target part is then cut to target_budget(len(x))
    positions, so that it fits the width `sequence_widths` gives this sequence."""
    if seq_len < MIN_SEQ_LEN:
        raise ValueError(f"seq_len must be at least {MIN_SEQ_LEN} (the special tokens, a source and a target token), "
                         f"got {seq_len}")
    x, y = list(src_ids), list(trg_ids)
    while len(x) + len(y) + 5 > seq_len:
        if len(x) > len(y):
            x.pop()
        elif len(x) < len(y):
            y.pop()
        else:
            x.pop()
            y.pop()
    if target_budget is not None:
        y = y[: max(0, target_budget(len(x)) - 2)]
    source = [CLS, *x, SEP, SEP]
    target = [CLS, *y, SEP]
    pad = seq_len - len(source) - len(target)
    return source + target + [PAD] * pad, [0] * len(source) + [1] * (len(target) + pad)


def target_budget(cfg) -> Callable | None:
    """Positions a trimmed sequence's target part gets for a source of n tokens (None: untrimmed):
    ceil(target_ratio * n) + target_margin, for an int n or, element-wise and on its device, a
    tensor of them (in float64, as Python computes it). `cfg` is a DataConfig."""
    if not cfg.trim:
        return None

    def budget(n):
        if isinstance(n, torch.Tensor):
            return torch.ceil(cfg.target_ratio * n.double()).long() + cfg.target_margin
        return math.ceil(cfg.target_ratio * n) + cfg.target_margin
    return budget


def source_part(input_mask: torch.Tensor) -> torch.Tensor:
    """(...,) positions of each encoded sequence's source part, `[CLS] x [SEP] [SEP]` (3 + the
    source's tokens): its mask-0 prefix, so also the position of the target's [CLS]."""
    return (input_mask == 0).sum(-1)


def sequence_widths(input_mask: torch.Tensor, cfg) -> torch.Tensor:
    """(N,) width of each encoded sequence (N, L; L may be a batch's cut of seq_len): its source
    part plus its target budget, capped at cfg.seq_len; seq_len for every sequence when `cfg.trim`
    is off. `cfg` is a DataConfig. On the tensor's device, without a host sync."""
    if not cfg.trim:
        return torch.full(input_mask.shape[:-1], cfg.seq_len, dtype=torch.long, device=input_mask.device)
    source = source_part(input_mask)
    return (source + target_budget(cfg)(source - 3)).clamp(max=cfg.seq_len)


def within_width(input_mask: torch.Tensor, cfg) -> torch.Tensor:
    """(N, L) bool: True at the positions inside each sequence's own width (`sequence_widths`)."""
    positions = torch.arange(input_mask.shape[-1], device=input_mask.device)
    return positions < sequence_widths(input_mask, cfg)[..., None]


def rounded_widths(widths: torch.Tensor, seq_len: int, multiple: int = 8) -> torch.Tensor:
    """Each width rounded up to a multiple of 8 (fewer shapes for the compiler, aligned kernels),
    at most seq_len."""
    return (-(-widths // multiple) * multiple).clamp(max=seq_len)


def batch_width(widths: torch.Tensor, seq_len: int) -> int:
    """The width a batch of sequences is cut to: its widest sequence's rounded width."""
    return int(rounded_widths(widths.max(), seq_len))


def width_batches(widths: torch.Tensor, seq_len: int, batch_size: int) -> list[torch.Tensor]:
    """Indices of sequences in batches of at most `batch_size` whose widths round up to the same
    `batch_width`, so that no sequence carries more PAD positions past its own width than training
    showed it (a batch's tail beyond a sequence's width is PAD the model never saw there). In
    index order when untrimmed (every width seq_len)."""
    rounded = rounded_widths(widths, seq_len)
    batches = []
    for width in rounded.unique().tolist():
        batches += list(torch.nonzero(rounded == width).flatten().split(batch_size))
    return batches


def tokenize_pairs(tok: Tokenizer, pairs: list[dict]) -> tuple[list[list[int]], list[list[int]]]:
    """(source ids, target ids) of each pair, without special tokens (build_sequence adds them)."""
    srcs = tok.encode_batch([p["src"] for p in pairs], add_special_tokens=False)
    trgs = tok.encode_batch([p["trg"] for p in pairs], add_special_tokens=False)
    return [s.ids for s in srcs], [t.ids for t in trgs]


def build_pairs(srcs: list[list[int]], trgs: list[list[int]], seq_len: int,
                budget: Callable[[int], int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, input_mask), int64 [N, seq_len] each, of tokenized pairs; `budget` from
    `target_budget` trims targets."""
    rows = [build_sequence(s, t, seq_len, budget) for s, t in zip(srcs, trgs)]
    shape = (len(rows), seq_len)
    # through numpy: torch.tensor of nested lists is a few times slower, and sampling encodes every split it decodes
    ids = np.array([ids for ids, _ in rows], dtype=np.int64).reshape(shape)
    mask = np.array([mask for _, mask in rows], dtype=np.int64).reshape(shape)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def encode_pairs(tok: Tokenizer, pairs: list[dict], seq_len: int,
                 budget: Callable[[int], int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, input_mask), int64 [N, seq_len] each; `budget` from `target_budget` trims targets."""
    return build_pairs(*tokenize_pairs(tok, pairs), seq_len, budget)


def save_encoded(path: str | Path, input_ids: torch.Tensor, input_mask: torch.Tensor) -> None:
    atomic.torch_save({"input_ids": input_ids, "input_mask": input_mask}, path)


def load_encoded(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        input_ids, input_mask = data["input_ids"], data["input_mask"]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as err:  # a truncated or foreign file fails in many ways
        raise DataError(f"{path}: not an encoded data file ({type(err).__name__}: {err})") from None
    if input_ids.shape != input_mask.shape or input_ids.dim() != 2:
        shapes = f"{tuple(input_ids.shape)} and {tuple(input_mask.shape)}"
        raise DataError(f"{path}: expected input_ids and input_mask of one [N, seq_len] shape, got {shapes}")
    return input_ids, input_mask


_SPECIAL_TEXT = re.compile(r"\[(?:CLS|SEP|PAD)\]")


def decode(tok: Tokenizer, ids: Sequence[int]) -> str:
    """Text of token ids as DiffuSeq's evaluator sees it: no special tokens, single spaces."""
    return decode_batch(tok, [ids])[0]


def decode_batch(tok: Tokenizer, sequences: Sequence[Sequence[int]]) -> list[str]:
    """`decode` of each sequence, the tokenizer's work done in one call."""
    lists = [ids.tolist() if isinstance(ids, torch.Tensor) else list(ids) for ids in sequences]
    # skip_special_tokens drops the PADs (trailing or not), CLS and SEP, and UNK too.
    return [" ".join(_SPECIAL_TEXT.sub(" ", text).split()) for text in tok.decode_batch(lists, skip_special_tokens=True)]


def split_sequence(input_ids, input_mask) -> tuple[list[int], list[int]]:
    """(source part ids, target part ids) of one encoded sequence; mask 0 marks the source part."""
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    mask = input_mask.tolist() if isinstance(input_mask, torch.Tensor) else list(input_mask)
    return [i for i, m in zip(ids, mask) if m == 0], [i for i, m in zip(ids, mask) if m != 0]
