"""Quality of recipe variants at one budget: train, sample the first N valid pairs, score, diagnose.

    python env/device/ablation.py SPEC OUT --variant NAME[:KEY=VALUE,KEY=VALUE...] ... [--set KEY=VALUE ...]
                           [--parallel K] [--examples 200] [--timeout S]

Each variant is SPEC with the common `--set` values and its own (a variant without values is SPEC
itself). Its library config goes through `diffusion` directly (no scheduler, no run folder): the
data is prepared once per distinct data section, each variant trains `python -m
diffusion.train` to its last step, then its last checkpoint samples the first `--examples` pairs of
the valid split (`python -m diffusion.sample`, single sample), is scored with DiffuSeq's metrics
(BLEU against the source and the share of empty outputs too) and diagnosed
(`python -m diffusion.diagnostics`). Up to K variants run at once on the one GPU: the budget is
the same number of optimizer steps for each, so sharing the card changes their wall time, not
their result (timings are then not the card's: `env/quality_check.sh` measures those alone).

Prints one JSON line per variant as it ends (also appended to OUT/ablation.jsonl) and a markdown
table at the end, with the copy-the-source row. Used by the device calls of issue 12.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from diffusion import metrics  # noqa: E402
from diffusion.config import to_dict  # noqa: E402
from diffusion.prepare import prepare  # noqa: E402
from pipeline.spec import load_spec  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition(":")
    return name, [s for s in sets.split(",") if s]


def chain(python: str, config: Path, data_dir: Path, run: Path, split: Path, examples: int) -> str:
    """The shell commands of one variant: train, sample its last checkpoint, diagnose it."""
    last = f"$(ls -d {run}/checkpoints/step_* | tail -1)"
    return (f"{python} -m diffusion.train {config} {run} --data-dir {data_dir} > {run}/train.out 2>&1 && "
            f"{python} -m diffusion.sample {last} {split} {run}/samples.jsonl --set sample.max_examples={examples} "
            f"> {run}/sample.out 2>&1 && "
            f"{python} -m diffusion.diagnostics {last} {split} --max-examples {examples} > {run}/diagnostics.json")


def summarize(name: str, cfg: dict, run: Path, seconds: float, returncode: int) -> dict:
    row = {"variant": name, "noising": cfg["diffusion"]["noising"], "steps": cfg["train"]["steps"],
           "wall_s": round(seconds, 1), "ok": returncode == 0}
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()] \
        if (run / "train_log.jsonl").is_file() else []
    if log:
        steady = log[1:] or log  # the first window holds the compile
        row["positions_per_s"] = sum(r["tokens_per_s"] for r in steady) / len(steady)
        row["real_tokens_per_s"] = sum(r.get("real_tokens_per_s", 0) for r in steady) / len(steady)
        row["final_terms"] = {"loss": log[-1]["loss"], **log[-1].get("terms", {})}
    if returncode != 0:
        for out in ("train.out", "sample.out"):
            if (run / out).is_file():
                row.setdefault("error_tail", (run / out).read_text()[-1500:])
        return row
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    row["scores"] = metrics.score([s["hyp"] for s in samples], [s["ref"] for s in samples],
                                  [s["src"] for s in samples], bertscore_model=None)
    row["examples"] = [s["hyp"] for s in samples[:5]]
    # the source as the paraphrase, against the same decoded references
    row["copy_source"] = metrics.score([s["src"] for s in samples], [s["ref"] for s in samples], bertscore_model=None)
    row["diagnostics"] = json.loads((run / "diagnostics.json").read_text())
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| variant | noising | steps | BLEU | ROUGE-L | Dist-1 | len | BLEU vs source | empty | "
            "acc (t low/mid/high) | emb / PAD norm | positions/s | real tok/s |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        s, d = r.get("scores"), r.get("diagnostics")
        if s is None:
            lines.append(f"| {r['variant']} | {r['noising']} | {r['steps']} | failed |" + " |" * 10)
            continue
        acc = "/".join(f"{v:.2f}" for v in d["token_accuracy"].values())
        lines.append(f"| {r['variant']} | {r['noising']} | {r['steps']} | {s['bleu']:.4f} | {s['rouge_l']:.4f} | "
                     f"{s['dist1']:.4f} | {s['len']:.2f} | {s['self_bleu_src']:.4f} | {s['empty']:.3f} | {acc} | "
                     f"{d['embedding_norm']:.2f} / {d['pad_norm']:.2f} | {r.get('positions_per_s', 0):,.0f} | "
                     f"{r.get('real_tokens_per_s', 0):,.0f} |")
    copy = next((r["copy_source"] for r in rows if "copy_source" in r), None)
    if copy:
        lines.append(f"| copy the source | | | {copy['bleu']:.4f} | {copy['rouge_l']:.4f} | {copy['dist1']:.4f} | "
                     f"{copy['len']:.2f} | 1.0000 | 0.000 | | | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("out", type=Path)
    parser.add_argument("--variant", action="append", required=True, help="NAME[:KEY=VALUE,...]")
    parser.add_argument("--set", action="append", default=[], help="for every variant")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=540, help="seconds for all variants together")
    args = parser.parse_args()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)

    jobs = []
    for text in args.variant:
        name, sets = parse_variant(text)
        spec = load_spec(args.spec, [*args.set, *sets])
        cfg = to_dict(spec.library_config())
        key = hashlib.sha256(json.dumps(cfg["data"], sort_keys=True).encode()).hexdigest()[:12]
        data_dir = args.out / f"data-{key}"
        prepare(spec.library_config().data, data_dir)  # once per distinct data section
        run = args.out / name
        run.mkdir(parents=True, exist_ok=True)
        config = run / "config.json"
        config.write_text(json.dumps(cfg))
        split = data_dir / f"{spec.evaluate.split}.jsonl"
        jobs.append((name, cfg, run, chain(sys.executable, config, data_dir, run, split, args.examples)))

    rows, running, queue = [], [], list(jobs)
    while queue or running:
        while queue and len(running) < args.parallel:
            name, cfg, run, command = queue.pop(0)
            running.append((name, cfg, run, time.monotonic(), subprocess.Popen(["bash", "-c", command], cwd=REPO)))
        time.sleep(2)
        for item in list(running):
            name, cfg, run, start, proc = item
            out_of_time = time.monotonic() - started > args.timeout
            if proc.poll() is None and not out_of_time:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            running.remove(item)
            row = summarize(name, cfg, run, time.monotonic() - start, proc.returncode)
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(args.out / "ablation.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
    table = markdown(rows)
    (args.out / "ablation.md").write_text(table)
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
