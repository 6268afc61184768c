import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `datasets` writes Arrow caches; keep them out of the home folder (set before it is imported)
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-datasets-")
# `pipeline submit` records where each run is (pipeline.run_index): the suite's runs stay out of
# the user's own index
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="pipeline-state-")
# and the user's own site profiles (~/.config/textdiffusion-pipeline/sites) stay out of the suite's
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="pipeline-config-")
os.environ.pop("PIPELINE_SITES", None)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
QQP_TRAIN = SHARED_DATA / "qqp" / "train.jsonl"
QQP_VALID = SHARED_DATA / "qqp" / "valid.jsonl"
# QQP is never committed (Quora's terms); the tests that read it need ../shared/data beside the repo
needs_qqp = pytest.mark.skipif(not (QQP_TRAIN.is_file() and QQP_VALID.is_file()),
                               reason=f"QQP is not at {SHARED_DATA / 'qqp'} (never committed: put the shared data beside the repo)")


def qqp_slice(path: Path, n: int, out: Path) -> Path:
    """The first n lines of a shared QQP file, copied into a test's temp folder."""
    with open(path) as src, open(out, "w") as dst:
        for _, line in zip(range(n), src):
            dst.write(line if line.endswith("\n") else line + "\n")
    return out
