"""How `submit --wait` and `retry --wait` show a run while they follow it: rich's bars on a
terminal, plain lines for a reader that is a file or a pipe."""

from __future__ import annotations

import time

from .console import console
from .layout import RunLayout
from .states import TaskState


def stage_progress(layout: RunLayout, stage: dict) -> tuple[int, int, str]:
    """(done, total, note) of a stage as the followers show it: training counts its steps."""
    from .status import format_eta, training_progress

    if stage["stage"] == "train" and stage["state"] != TaskState.DONE and (beat := training_progress(layout)):
        note = f"loss {beat['loss']:.4f}  {beat['tokens_per_s']:,.0f} tok/s  ETA {format_eta(beat['eta_s'])}"
        return beat["step"], beat["total_steps"], note
    return stage["done"], stage["total"], stage["state"]


class ProgressBars:
    """rich's bars, one a stage, redrawn in place."""

    def __init__(self, layout: RunLayout):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.layout, self.ids = layout, {}
        self.bars = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console, transient=False)

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bars.__exit__(*exc)

    def __call__(self, st: dict) -> None:
        for stage in st["stages"]:
            done, total, note = stage_progress(self.layout, stage)
            if stage["stage"] not in self.ids:
                self.ids[stage["stage"]] = self.bars.add_task(stage["stage"], total=total, note=note)
            self.bars.update(self.ids[stage["stage"]], completed=done, total=total, note=note)


class ProgressLines:
    """A plain line for a reader that is a file or a pipe: whenever a stage moves on, and every
    `every_s` seconds between, so that a log shows the run as it goes, not at its end."""

    def __init__(self, layout: RunLayout, every_s: float = 30.0):
        self.layout, self.every_s = layout, every_s
        self.last_states, self.last_time = None, 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, st: dict) -> None:
        states = [(stage["stage"], stage["state"], stage["done"]) for stage in st["stages"]]
        if states == self.last_states and time.monotonic() - self.last_time < self.every_s:
            return
        self.last_states, self.last_time = states, time.monotonic()
        parts = []
        for stage in st["stages"]:
            done, total, note = stage_progress(self.layout, stage)
            parts.append(f"{stage['stage']} {done}/{total} {note}")
        print(f"[{time.strftime('%H:%M:%S')}] {st['run']}: " + " | ".join(parts), flush=True)
