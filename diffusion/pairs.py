"""Pairs without torch: checking a DiffuSeq-format jsonl file ({"src": str, "trg": str} a line)
line by line, reading a few pairs, and DiffuSeq's QQP split of the hub's Quora pairs.

The pipeline runs these on a login node at submit time (the check before anything is queued,
the hub dataset's download into the offline cache), and `data.load_pairs` checks again before
reading the file for real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

# DiffuSeq's QQP split sizes: the first 2,500 positive pairs are test, the next 2,048 valid.
TEST_SIZE = 2500
VALID_SIZE = 2048


class DataError(ValueError):
    """A data file is missing, unreadable or malformed; the message names the file (and line)."""


def check_pairs_file(path: str | Path, fields: tuple[str, ...] = ("src", "trg")) -> int:
    """The number of pairs in `path` (blank lines skipped); a DataError naming the file and the
    line for anything that is not a JSON object with string `fields`."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a jsonl file")
    count = 0
    try:
        with path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    # decoded here: json.loads guesses UTF-16 from some bytes; and without its newline,
                    # an error at the end of the line does not read "line 2"
                    row = json.loads(line.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {err.start} of the line)") from None
                except json.JSONDecodeError as err:  # its own "line 1 column 5" would name the wrong line
                    raise DataError(f"{path}:{lineno}: not valid JSON: {err.msg} (column {err.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                for key in fields:
                    if not isinstance(row.get(key), str):
                        problem = "missing" if key not in row else f"not a string ({row[key]!r})"
                        raise DataError(f"{path}:{lineno}: field {key!r} is {problem}")
                count += 1
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    return count


def read_pairs(path: str | Path, limit: int | None = None) -> list[dict]:
    """The first `limit` pairs of a checked file, with the standard library only (quicker than
    `data.load_pairs` for the few hundred pairs a diagnosis reads)."""
    check_pairs_file(path)
    pairs = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(pairs) >= limit:
                break
            if line.strip():
                row = json.loads(line)
                pairs.append({"src": row["src"], "trg": row["trg"]})
    return pairs


def diffuseq_split(rows: Iterable[dict]) -> dict[str, list[dict]]:
    """DiffuSeq's QQP split of Quora rows (id, question1, question2, is_duplicate): the positive
    pairs in pair-id order, question1 as src and question2 as trg, text unchanged;
    test = the first 2,500, valid = the next 2,048, train = the rest."""
    positives = sorted(
        (int(r["id"]), r["question1"], r["question2"]) for r in rows if int(r["is_duplicate"]) == 1
    )
    if len(positives) <= TEST_SIZE + VALID_SIZE:
        raise DataError(
            f"only {len(positives)} positive pairs; DiffuSeq's split needs more than {TEST_SIZE + VALID_SIZE}"
        )
    pairs = [{"src": q1, "trg": q2} for _, q1, q2 in positives]
    return {
        "train": pairs[TEST_SIZE + VALID_SIZE :],
        "valid": pairs[TEST_SIZE : TEST_SIZE + VALID_SIZE],
        "test": pairs[:TEST_SIZE],
    }


def load_hub_qqp(name: str = "AlekseyKorshuk/quora-question-pairs", cache_dir=None) -> dict[str, list[dict]]:
    """DiffuSeq's QQP split rebuilt from Quora's question pairs on the Hugging Face hub."""
    import datasets

    ds = datasets.load_dataset(name, split="train", cache_dir=cache_dir)
    return diffuseq_split(ds.select_columns(["id", "question1", "question2", "is_duplicate"]))
