"""What `env/quality_check.sh` prints beside the results table, per run folder: the train stage's
wall time (from the end of preprocess to the end of training, so compile, checkpoints and the
executor's own delays are included), its speed (positions and real tokens a second, the mean of
the logged windows after the first, which compiles), the last logged loss terms, and each
checkpoint's diagnostics (token accuracy at three noise levels, embedding and PAD norms).

    python env/device/quality_summary.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summary(run_dir: Path) -> list[str]:
    state = run_dir / "state"
    preprocess = json.loads((state / "preprocess.done").read_text())["finished"]
    train = json.loads((state / "train.done").read_text())["finished"]
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    steady = log[1:] or log
    positions = sum(r["tokens_per_s"] for r in steady) / len(steady)
    real = sum(r.get("real_tokens_per_s", 0) for r in steady) / len(steady)
    terms = " ".join(f"{k} {v:.4f}" for k, v in {"loss": log[-1]["loss"], **log[-1].get("terms", {})}.items())
    lines = [f"## {run_dir.name}: train stage {train - preprocess:.0f} s for {log[-1]['step']} steps, "
             f"{positions:,.0f} positions/s, {real:,.0f} real tokens/s (mean of {len(steady)} windows), "
             f"peak {max(r.get('max_memory_gib', 0) for r in log):.1f} GiB",
             f"last loss terms: {terms}",
             "token accuracy at noise level t, by the logits' argmax / by L2 rounding:",
             "| step | " + " | ".join(_levels(run_dir)) + " | embedding norm | PAD norm |",
             "| --- |" + " --- |" * (len(_levels(run_dir)) + 2)]
    for path in sorted((run_dir / "metrics").glob("step_*.json")):
        m = json.loads(path.read_text())
        d = m.get("diagnostics", {})
        rounding = d.get("rounding_accuracy", {})
        acc = " | ".join(f"{v:.3f} / {rounding.get(k, float('nan')):.3f}" for k, v in _by_level(d.get("token_accuracy", {})))
        lines.append(f"| {m['step']} | {acc} | {d.get('embedding_norm', 0):.3f} | {d.get('pad_norm', 0):.3f} |")
    return lines


def _by_level(accuracy: dict) -> list[tuple[str, float]]:
    return sorted(accuracy.items(), key=lambda item: int(item[0].split("=")[1]))  # "t=200" after "t=10"


def _levels(run_dir: Path) -> list[str]:
    for path in sorted((run_dir / "metrics").glob("step_*.json")):
        return [k for k, _ in _by_level(json.loads(path.read_text()).get("diagnostics", {}).get("token_accuracy", {}))]
    return []


def main(argv: list[str]) -> int:
    for run_dir in map(Path, argv):
        try:
            print("\n".join(summary(run_dir)) + "\n", flush=True)
        except (OSError, KeyError, ValueError) as err:
            print(f"## {run_dir.name}: incomplete ({type(err).__name__}: {err})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
