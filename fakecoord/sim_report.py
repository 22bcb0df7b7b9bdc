"""What a person sees of a simulation: a progress bar, a summary table, a plot.

The simulation calls a :class:`RunView`; :class:`QuietView` shows nothing,
:class:`RichView` draws with ``rich`` (progress bar over rounds with the
current eval loss on stderr, the summary table on stdout).  :func:`write_plot`
imports matplotlib (Agg backend) only when called.
"""

from __future__ import annotations

import math
import os
from typing import Any


class RunView:
    """Callbacks of a run; the base class shows nothing."""

    def start(self, total_rounds: int, completed: int, description: str) -> None:
        """The rounds are about to run (``completed`` of them were done before a resume)."""

    def event(self, text: str) -> None:
        """Something worth a line: a fault, a restart, a resume."""

    def round_done(self, record: dict) -> None:
        """One round committed."""

    def finish(self, report: dict) -> None:
        """The run ended (normally or stopped early); show the summary."""

    def close(self) -> None:
        """Release the terminal (also after an interrupt)."""


QuietView = RunView


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "-"


class RichView(RunView):
    """Progress on stderr, summary on stdout."""

    def __init__(self) -> None:
        from rich.console import Console

        self.err = Console(stderr=True)
        self.out = Console()
        self._progress: Any = None
        self._task: Any = None

    def start(self, total_rounds: int, completed: int, description: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.err.print(description)
        self._progress = Progress(
            TextColumn("[bold]rounds"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            console=self.err,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "rounds", total=total_rounds, completed=completed, loss=""
        )

    def event(self, text: str) -> None:
        (self._progress.console if self._progress else self.err).print(text, highlight=False)

    def round_done(self, record: dict) -> None:
        if self._progress is None:
            return
        loss = f"eval loss {_fmt(record.get('eval_loss'))}"
        if record.get("baseline"):
            loss += f"  baseline {_fmt(record['baseline'].get('eval_loss'))}"
        self._progress.update(self._task, advance=1, loss=loss)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def finish(self, report: dict) -> None:
        self.close()
        self.out.print(summary_table(report))
        for line in summary_lines(report):
            self.out.print(line, highlight=False)


def summary_table(report: dict) -> Any:
    """A rich Table: one row per round."""
    from rich.table import Table

    has_baseline = any(r.get("baseline") for r in report.get("rounds", []))
    table = Table(title=f"fakecoord {report['settings']['protocol']} run", title_justify="left")
    table.add_column("round", justify="right")
    table.add_column("eval loss", justify="right")
    if has_baseline:
        table.add_column("baseline", justify="right")
    table.add_column("peers ok", justify="right")
    table.add_column("mean train loss", justify="right")
    table.add_column("round s", justify="right")
    table.add_column("in workers", justify="right")
    table.add_column("faults")
    table.add_row(
        "0",
        _fmt(report.get("initial_eval_loss")),
        *([""] if has_baseline else []),
        "",
        "",
        "",
        "",
        "",
    )
    for record in report.get("rounds", []):
        timings = record.get("timings", {})
        share = ""
        if timings.get("round_seconds"):
            share = f"{100 * timings['worker_call_seconds'] / timings['round_seconds']:.0f}%"
        faults = ", ".join(
            f"{f['kind']}@{f['peer']}"
            for f in report.get("faults", [])
            if f["round"] == record["round"]
        )
        row = [str(record["round"]), _fmt(record.get("eval_loss"))]
        if has_baseline:
            row.append(_fmt((record.get("baseline") or {}).get("eval_loss")))
        row += [
            f"{len(record.get('contributors', []))}/{len(record.get('peers', {}))}",
            _fmt(mean_train_loss(record)),
            _fmt(timings.get("round_seconds"), 2),
            share,
            faults,
        ]
        table.add_row(*row)
    return table


def mean_train_loss(record: dict) -> float | None:
    losses = [
        p["metrics"]["loss"]
        for p in record.get("peers", {}).values()
        if p.get("status") == "ok" and isinstance(p.get("metrics", {}).get("loss"), (int, float))
    ]
    return sum(losses) / len(losses) if losses else None


def summary_lines(report: dict) -> list[str]:
    timings = report.get("timings", {})
    lines = [
        f"eval loss {_fmt(report.get('initial_eval_loss'))} -> {_fmt(report.get('final_eval_loss'))}"
        f" after {len(report.get('rounds', []))} rounds",
    ]
    baseline = report.get("baseline")
    if baseline and baseline.get("final_eval_loss") is not None:
        lines.append(
            f"single-peer baseline ({baseline['steps_per_round']} steps per round): final eval loss "
            f"{_fmt(baseline['final_eval_loss'])}"
        )
    if timings:
        lines.append(
            f"wall {timings.get('wall_seconds', 0):.1f} s (startup {timings.get('startup_seconds', 0):.1f} s); "
            f"in rounds {timings.get('rounds_seconds', 0):.1f} s, of which coordinator overhead "
            f"{100 * (timings.get('coordinator_overhead_share') or 0):.1f}%"
        )
    for fault in report.get("faults", []):
        recovery = fault.get("recovery") or {}
        detected = (fault.get("error") or "").split(":", 1)[0] or "failure"
        lines.append(
            f"fault {fault['spec']}: {detected} in round {fault['round']}; "
            f"recovery: {recovery.get('action', 'pending')}"
        )
    return lines


def write_plot(report: dict, path: str | os.PathLike) -> None:
    """Draw eval loss per round (and the baseline) and per-peer training loss to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rounds = report.get("rounds", [])
    fig, (ax_eval, ax_train) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [0] + [r["round"] for r in rounds]
    ys = [report.get("initial_eval_loss")] + [r.get("eval_loss") for r in rounds]
    label = "DiLoCo" if report["settings"]["protocol"] == "diloco" else "windows (canonical)"
    ax_eval.plot(
        *_finite(xs, ys), marker="o", label=f"{label}, {report['settings']['peers']} peers"
    )
    if any(r.get("baseline") for r in rounds):
        bys = [report.get("initial_eval_loss")] + [
            (r.get("baseline") or {}).get("eval_loss") for r in rounds
        ]
        steps = (report.get("baseline") or {}).get("steps_per_round")
        ax_eval.plot(
            *_finite(xs, bys), marker="s", linestyle="--",
            label=f"single-peer baseline ({steps} steps/round)",
        )  # fmt: skip
    for fault in report.get("faults", []):
        ax_eval.axvline(fault["round"], color="red", alpha=0.25)
    ax_eval.set_xlabel("round")
    ax_eval.set_ylabel("validation loss")
    ax_eval.set_yscale("log")
    ax_eval.set_title("eval loss per round")
    ax_eval.legend()
    ax_eval.grid(alpha=0.3)
    peers = sorted({int(p) for r in rounds for p in r.get("peers", {})})
    for peer in peers:
        px, py = [], []
        for record in rounds:
            entry = record.get("peers", {}).get(str(peer), {})
            loss = entry.get("metrics", {}).get("loss") if entry.get("status") == "ok" else None
            px.append(record["round"])
            py.append(loss)
        ax_train.plot(*_finite(px, py), marker=".", label=f"peer {peer}")
    ax_train.set_xlabel("round")
    ax_train.set_ylabel("training loss (mean over the round's steps)")
    ax_train.set_title("per-peer training loss")
    ax_train.set_yscale("log")
    if peers:
        ax_train.legend(fontsize="small")
    ax_train.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finite(xs: list, ys: list) -> tuple[list, list]:
    pairs = [
        (x, y)
        for x, y in zip(xs, ys, strict=True)
        if isinstance(y, (int, float)) and math.isfinite(y)
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


__all__ = ["QuietView", "RichView", "RunView", "summary_lines", "summary_table", "write_plot"]
