"""Checks at submit time, before anything is written or queued, of what the jobs will read: every
data file named by the spec exists, is readable and parses (each line, by its number), has the
fields a split needs, and the train split holds at least one micro-batch of pairs for every rank.
On a cluster a mistake found here costs a second instead of a queue wait. The preprocess job runs
the same checks again (the files may have changed in between).
"""

from __future__ import annotations

from diffusion.pairs import DataError, check_pairs_file

from .errors import UserError
from .spec import JobSpec


class PreflightError(UserError, ValueError):
    pass


def check_data(spec: JobSpec) -> dict[str, int]:
    """{split: pairs} of the local files the spec names; PreflightError naming key, file and line."""
    counts = {}
    for split in ("train", "valid", "test"):
        path = getattr(spec.data, split)
        if not path:
            continue
        try:
            counts[split] = check_pairs_file(path)
        except DataError as err:
            raise PreflightError(f"data.{split}: {err}") from None
        if counts[split] == 0:
            raise PreflightError(f"data.{split}: {path}: no pairs in the file")
    if "train" in counts:
        check_train_size(spec, min(counts["train"], spec.data.max_train_pairs or counts["train"]), spec.data.train)
    return counts


def check_train_size(spec: JobSpec, pairs: int, source: str) -> None:
    res = spec.resources.train
    ranks = res.gpus if res.gpus > 0 else res.ranks
    needed = spec.train.micro_batch_size * ranks * res.nodes
    if pairs < needed:
        raise PreflightError(f"data.train: {source}: {pairs} training pairs are fewer than one micro-batch "
                             f"(train.micro_batch_size {spec.train.micro_batch_size}) for each of {ranks * res.nodes} "
                             "rank(s); give more pairs or a smaller micro-batch")
