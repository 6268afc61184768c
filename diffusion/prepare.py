"""Preprocessing: train the BPE vocabulary on the train split and encode every split.

    DATA_DIR/tokenizer.json
    DATA_DIR/{train,valid,test}.pt      (input_ids, input_mask), each (N, seq_len) int64
    DATA_DIR/{train,valid,test}.jsonl   the pairs as read (sampling and evaluation use the text)
    DATA_DIR/prepared.json              written last: counts and sources

`prepare` is idempotent: a folder with prepared.json is left as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import atomic
from .config import DataConfig, checked, to_dict
from .corpus import make_pairs
from .data import SPECIAL_TOKENS, DataError, encode_pairs, target_budget, load_pairs, save_encoded, save_tokenizer, train_tokenizer
from .manifest import TOKENIZER
from .pairs import load_hub_qqp

SPLITS = ("train", "valid", "test")


def read_splits(cfg: DataConfig) -> dict[str, list[dict]]:
    """The pairs of each split named in the config (local jsonl paths win over the hub)."""
    splits: dict[str, list[dict]] = {}
    if cfg.synthetic_pairs:
        splits = {"train": make_pairs(cfg.synthetic_pairs, 0), "valid": make_pairs(200, 1), "test": make_pairs(200, 2)}
    elif cfg.hub_dataset and not cfg.train:
        splits = load_hub_qqp(cfg.hub_dataset)
    for name in SPLITS:
        path = getattr(cfg, name)
        if path:
            splits[name] = load_pairs(path)
    if cfg.max_train_pairs is not None:
        splits["train"] = splits["train"][: cfg.max_train_pairs]
    return splits


def prepare(cfg: DataConfig, data_dir: str | Path) -> dict:
    """Build DATA_DIR (see module doc); returns the contents of prepared.json."""
    data_dir = Path(data_dir)
    done = data_dir / "prepared.json"
    if done.is_file():
        return json.loads(done.read_text())
    splits = read_splits(checked(cfg, "data"))  # a source is named, the lengths fit (DataConfig.check)
    if not splits["train"]:
        raise DataError(f"data: the train split ({cfg.train or cfg.hub_dataset or 'synthetic'}) has no pairs")
    texts = [text for pair in splits["train"] for text in (pair["src"], pair["trg"])]
    tokenizer = train_tokenizer(texts, cfg.vocab_size, cfg.lowercase)
    if tokenizer.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise DataError(f"data: the train split gives a vocabulary of special tokens only ({tokenizer.get_vocab_size()})")
    save_tokenizer(tokenizer, data_dir / TOKENIZER)
    counts = {}
    for name, pairs in splits.items():
        input_ids, input_mask = encode_pairs(tokenizer, pairs, cfg.seq_len, target_budget(cfg))
        save_encoded(data_dir / f"{name}.pt", input_ids, input_mask)
        atomic.write_jsonl(data_dir / f"{name}.jsonl", pairs)
        counts[name] = len(pairs)
    info = {"counts": counts, "vocab_size": tokenizer.get_vocab_size(), "data": to_dict(cfg)}
    atomic.write_json(done, info)
    return info
