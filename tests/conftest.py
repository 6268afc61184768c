import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `datasets` writes Arrow caches; keep them out of the home folder (set before it is imported)
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-datasets-")
# `pipeline submit` records where each run is (pipeline.run_index): the suite's runs stay out of
# the user's own index
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="pipeline-state-")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
QQP_TRAIN = SHARED_DATA / "qqp" / "train.jsonl"
QQP_VALID = SHARED_DATA / "qqp" / "valid.jsonl"


def qqp_slice(path: Path, n: int, out: Path) -> Path:
    """The first n lines of a shared QQP file, copied into a test's temp folder."""
    with open(path) as src, open(out, "w") as dst:
        for _, line in zip(range(n), src):
            dst.write(line if line.endswith("\n") else line + "\n")
    return out
