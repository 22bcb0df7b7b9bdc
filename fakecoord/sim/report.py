"""What a person sees of a run: a progress bar, a summary table and lines, a plot.

The engine calls a :class:`RunView`; :class:`QuietView` shows nothing,
:class:`RichView` draws with ``rich`` (a progress bar over rounds with the
current eval value on stderr, the summary table on stdout).
:func:`write_plot` imports matplotlib (Agg backend) only when called.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .record import COUNT_METRICS, numeric


class RunView:
    """Callbacks of a run; the base class shows nothing."""

    def start(self, total_rounds: int, completed: int, description: str) -> None:
        """The rounds are about to run (``completed`` of them were done before a resume)."""

    def event(self, text: str, style: str | None = None) -> None:
        """Something worth a line: a fault, a restart, a resume.  ``text`` is plain text (never
        read as markup: it quotes workloads, paths and metric names); ``style`` colours it."""

    def round_done(self, record: dict) -> None:
        """One round committed."""

    def finish(self, report: dict) -> None:
        """The run ended (normally or stopped early); show the summary."""

    def close(self) -> None:
        """Release the terminal (also after an interrupt)."""


QuietView = RunView


def fmt(value: Any, digits: int = 4) -> str:
    if numeric(value):
        return f"{value:.{digits}f}" if abs(value) >= 10**-digits or value == 0 else f"{value:.3g}"
    return "-"


PIPED_WIDTH = 1000
"""The width rich lays tables out in when output goes to a file or a pipe (no wrapping, no
truncated headers; ``COLUMNS`` still wins when set)."""


def console(stderr: bool = False) -> Any:
    """A rich Console for stdout or stderr: the terminal's width on a terminal, else
    :data:`PIPED_WIDTH` without soft wrapping (rich would assume 80 columns)."""
    from rich.console import Console

    plain = Console(stderr=stderr)
    if plain.is_terminal or os.environ.get("COLUMNS"):
        return plain
    return Console(stderr=stderr, width=PIPED_WIDTH, soft_wrap=True)


class RichView(RunView):
    """Progress on stderr, summary on stdout.  Every text is printed as a ``rich.text.Text``
    (or with ``markup=False``): nothing a workload, a path or a metric name says is read as
    markup."""

    def __init__(self) -> None:
        self.err = console(stderr=True)
        self.out = console()
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
        from rich.text import Text

        self.err.print(Text(description), highlight=False)
        self._progress = Progress(
            TextColumn("[bold]rounds"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[value]}", markup=False),
            TimeElapsedColumn(),
            console=self.err,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "rounds", total=total_rounds, completed=completed, value=""
        )

    def event(self, text: str, style: str | None = None) -> None:
        from rich.text import Text

        console = self._progress.console if self._progress else self.err
        console.print(Text(text, style=style or ""), highlight=False)

    def round_done(self, record: dict) -> None:
        if self._progress is None:
            return
        shown = "failed" if record.get("eval_error") else fmt(record.get("eval_value"))
        value = f"{record.get('eval_metric', 'eval')} {shown}"
        if record.get("baseline"):
            value += f"  baseline {fmt(record['baseline'].get('eval_value'))}"
        self._progress.update(self._task, advance=1, value=value)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def finish(self, report: dict) -> None:
        from rich.text import Text

        self.close()
        self.out.print(summary_table(report))
        for line in summary_lines(report):
            self.out.print(Text(line), highlight=False)


def summary_table(report: dict) -> Any:
    """A rich Table: one row per round."""
    from rich.table import Table
    from rich.text import Text

    metric = report.get("eval_metric", "loss")
    has_baseline = any(r.get("baseline") for r in report.get("rounds", []))
    table = Table(title=Text(f"fakecoord {report.get('strategy')} run"), title_justify="left")
    for name in ("round", f"eval {metric}"):
        table.add_column(Text(name), justify="right")
    if has_baseline:
        table.add_column("baseline", justify="right")
    for name in ("peers ok", "mean train loss", "round s", "in workers"):
        table.add_column(name, justify="right")
    table.add_column("faults")
    first = ["0", fmt(report.get("initial_eval_value"))] + [""] * (5 + has_baseline)
    table.add_row(*(Text(cell) for cell in first))
    for record in report.get("rounds", []):
        timings = record.get("timings", {})
        share = ""
        if timings.get("round_seconds"):
            share = f"{100 * timings['worker_call_seconds'] / timings['round_seconds']:.0f}%"
        notes = [
            f"{f['kind']}@{f['peer']}"
            for f in report.get("faults", [])
            if f["round"] == record["round"]
        ]
        notes += [f"drop@{p}" for p in record.get("dropped", [])]
        if record.get("round_failed"):
            notes.append("round failed")
        notes += [
            f"slow@{p}"
            for p, entry in record.get("peers", {}).items()
            if entry.get("straggle_seconds")
        ]
        row = [
            str(record["round"]),
            "failed" if record.get("eval_error") else fmt(record.get("eval_value")),
        ]
        if has_baseline:
            entry = record.get("baseline") or {}
            row.append("failed" if entry.get("eval_error") else fmt(entry.get("eval_value")))
        asked = (
            len(record.get("peers", {}))
            - len(record.get("dropped", []))
            - len(record.get("outside_group", []))
        )
        row += [
            f"{len(record.get('contributors', []))}/{asked}",
            fmt(mean_train_loss(record)),
            fmt(timings.get("round_seconds"), 2),
            share,
            ", ".join(notes),
        ]
        table.add_row(*(Text(cell) for cell in row))
    return table


def mean_train_loss(record: dict) -> float | None:
    losses = [
        p["metrics"]["loss"]
        for p in record.get("peers", {}).values()
        if p.get("status") == "ok" and numeric(p.get("metrics", {}).get("loss"))
    ]
    return sum(losses) / len(losses) if losses else None


def summary_lines(report: dict) -> list[str]:
    metric = report.get("eval_metric", "loss")
    timings = report.get("timings", {})
    lines = [
        f"eval {metric} {fmt(report.get('initial_eval_value'))} -> "
        f"{fmt(report.get('final_eval_value'))} after {len(report.get('rounds', []))} rounds "
        f"({report.get('strategy')}, {report['settings']['peers']} peers)",
    ]
    refused = (report.get("network") or {}).get("refused_by_network")
    if refused:
        lines.append(
            f"BEYOND THE NETWORK: {refused} (the network refuses this outer optimizer for "
            "Python workloads; --beyond-network ran it as the simulation's own)"
        )
    baseline = report.get("baseline")
    if baseline and baseline.get("final_eval_value") is not None:
        lines.append(
            f"baseline: eval {metric} {fmt(baseline['final_eval_value'])}; {baseline['description']}."
        )
        if baseline["steps_per_round"] > report["settings"]["inner_steps"]:
            strategy = report.get("strategy")
            if strategy == "diloco":
                moves = "only their averaged update moves it. DiLoCo"
            elif strategy == "windows":
                moves = "only the merge of their windows moves it. Window merging"
            else:
                moves = f"only the aggregate of their work moves it. The {strategy} strategy"
            lines.append(
                "  (At equal total steps the baseline can win: its steps are sequential, each "
                "seeing the last one's update, while the peers train in parallel from a shared "
                f"base and {moves} trades that for parallel wall time and rare communication.)"
            )
    if timings:
        lines.append(
            f"wall {timings.get('wall_seconds', 0):.1f} s (startup {timings.get('startup_seconds', 0):.1f} s); "
            f"in rounds {timings.get('rounds_seconds', 0):.1f} s, of which coordinator overhead "
            f"{100 * (timings.get('coordinator_overhead_share') or 0):.1f}%"
            + (
                f", stragglers held rounds {timings['straggle_seconds']:.1f} s"
                if timings.get("straggle_seconds")
                else ""
            )
        )
    threads = report.get("threads")
    if threads:
        lines.append(
            f"threads per worker: {threads['per_worker'] or 'default'} ({threads['reason']})"
        )
    dropped = sum(len(r.get("dropped", [])) for r in report.get("rounds", []))
    if dropped:
        lines.append(f"dropouts: {dropped} peer-rounds missed")
    for fault in report.get("faults", []):
        recovery = fault.get("recovery") or {}
        lines.append(
            f"fault {fault['spec']} in round {fault['round']}: {fault.get('error') or 'failure'}; "
            f"recovery: {recovery.get('action', 'pending')}"
        )
    for record in report.get("rounds", []):
        if record.get("eval_error"):
            lines.append(f"round {record['round']}: evaluation failed: {record['eval_error']}")
        if (record.get("baseline") or {}).get("eval_error"):
            lines.append(
                f"round {record['round']}: the baseline's evaluation failed: "
                f"{record['baseline']['eval_error']}"
            )
        if record.get("round_failed"):
            lines.append(
                f"round {record['round']} failed (as in the network): {record['round_failed']}"
            )
    heads = [
        str(r["round"])
        for r in report.get("rounds", [])
        if "checkpoint_head" in r.get("aggregate", {})
    ]
    if heads:
        every = report["settings"].get("checkpoint_interval_rounds")
        lines.append(
            f"checkpoint heads (every {every} completed rounds, as the network publishes them): "
            f"after round {', '.join(heads)}"
        )
    lines += wire_lines(report)
    if report.get("device_override"):
        lines.append(f"warning: {report['device_override']}")
    if report.get("stopped"):
        lines.append(f"stopped early: {report['stopped']['reason']}")
    if report.get("run_failed"):
        lines.append(f"run failed: {report['run_failed']}")
    return lines


def wire_lines(report: dict) -> list[str]:
    """What the codec put on the wire, and the simulated clock when a link was modelled."""
    wires = [
        (r, r["aggregate"]["wire"])
        for r in report.get("rounds", [])
        if "wire" in r.get("aggregate", {})
    ]
    if not wires:
        return []
    total = sum(w["encoded_bytes_total"] for _, w in wires)
    first = wires[0][1]
    lines = [
        f"wire: {first['codec']} puts {_bytes(first['encoded_bytes_per_peer'])} per peer and round on "
        f"the wire ({first['values']} values); {_bytes(total)} in {len(wires)} rounds"
    ]
    transfer = sum(r["timings"].get("transfer_seconds", 0.0) for r, _ in wires)
    last = report["rounds"][-1]["timings"]
    if "transfer_seconds" in first:
        lines.append(
            f"simulated time {last.get('simulated_seconds_at_end', 0):.1f} s = wall "
            f"{last.get('wall_seconds_at_end', 0):.1f} s + modelled transfer {transfer:.1f} s "
            f"(--link {' '.join(report['settings'].get('link') or [])})"
        )
    return lines


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def plotted_metrics(report: dict) -> list[str]:
    """The evaluated metrics worth a panel: numeric, not a count, and not constant."""
    series: dict[str, list[float]] = {}
    for metrics in [report.get("initial_eval", {})] + [r.get("eval", {}) for r in report["rounds"]]:
        for name, value in metrics.items():
            if numeric(value) and name not in COUNT_METRICS:
                series.setdefault(name, []).append(float(value))
    chosen = [m for m, vs in series.items() if len(set(vs)) > 1]
    metric = report.get("eval_metric", "loss")
    if metric in series and metric not in chosen:
        chosen.append(metric)
    return sorted(chosen, key=lambda m: (m != metric, m))


def _is_bounded(name: str, values: list[float]) -> bool:
    words = ("acc", "f1", "precision", "recall", "auc", "iou", "score")
    return all(0 <= v <= 1 for v in values) and any(w in name.lower() for w in words)


def _scale(axis: Any, name: str, values: list[float]) -> str:
    """Linear for bounded metrics (and anything with zeros or negatives), log when the values
    span more than a decade and are all positive."""
    if not values:
        return "linear"
    if _is_bounded(name, values):
        axis.set_ylim(-0.02, 1.02)
        return "linear"
    if min(values) > 0 and max(values) / min(values) > 10:
        axis.set_yscale("log")
        return "log"
    return "linear"


MAX_METRIC_PANELS = 12
"""The plot draws at most this many evaluated metrics (the followed one first); the rest are
named in the figure and on stderr, so 150 metrics never make a 20,000-pixel image."""
PLOT_LIMIT = 1e300
"""Values beyond +-PLOT_LIMIT are drawn at the limit (the panel's title says so): axis limits
with margins stay finite for any finite float64."""


PLAIN: dict[str, Any] = {"parse_math": False}
"""Text properties of every label the plot draws: literal text, never mathtext (a metric named
``spend_$_per_$_token`` is shown as written)."""


def _plain_legend(ax: Any) -> None:
    for text in ax.legend(fontsize="small").get_texts():
        text.set_parse_math(False)


def _clipped(ys: list) -> tuple[list, bool]:
    """``ys`` with finite values beyond :data:`PLOT_LIMIT` moved to it; whether any was."""
    out, clipped = [], False
    for y in ys:
        if numeric(y) and abs(y) > PLOT_LIMIT:
            y, clipped = math.copysign(PLOT_LIMIT, y), True
        out.append(float(y) if numeric(y) else y)
    return out, clipped


def plot_events(report: dict) -> list[tuple[float, str]]:
    """Where the plot marks events on every panel: ``(x, "fault")`` at each fault's round and
    ``(x, "resumed")`` between the rounds a resumed run continued after and from."""
    events = [(float(f["round"]), "fault") for f in report.get("faults", [])]
    events += [(r["after_round"] + 0.5, "resumed") for r in report.get("resumed", [])]
    return events


def mark_events(ax: Any, report: dict) -> bool:
    """Draw :func:`plot_events` on ``ax`` (each kind labelled once); True when any was drawn."""
    styles: dict[str, dict[str, Any]] = {
        "fault": {"color": "red", "alpha": 0.25},
        "resumed": {"color": "0.3", "linestyle": ":"},
    }
    labelled: set[str] = set()
    for x, kind in plot_events(report):
        label = None if kind in labelled else kind
        labelled.add(kind)
        ax.axvline(x, label=label, **styles[kind])
    return bool(labelled)


def write_plot(report: dict, path: str | os.PathLike) -> list[str]:
    """One panel per evaluated metric (and the baseline's; at most :data:`MAX_METRIC_PANELS`),
    per-peer training loss, and the time of each round; saved atomically to ``path`` in the
    format its extension names.  Every label is plain text.  Returns the metrics left out."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..files import staged_file

    rounds = report.get("rounds", [])
    every = plotted_metrics(report)
    metrics, left_out = every[:MAX_METRIC_PANELS], every[MAX_METRIC_PANELS:]
    panels = len(metrics) + 2
    columns = min(panels, 3)
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    flat = list(axes.flat)
    settings = report["settings"]
    label = f"{report.get('strategy')}, {settings['peers']} peers"
    xs = [0] + [r["round"] for r in rounds]
    wall = report.get("timings", {}).get("wall_seconds", 0.0)
    simulated = rounds[-1]["timings"].get("simulated_seconds_at_end") if rounds else None
    transfer = sum(r["timings"].get("transfer_seconds", 0.0) for r in rounds)
    clock = f"wall {wall:.1f} s" + (
        f", simulated {simulated:.1f} s with the link model" if transfer and simulated else ""
    )
    fig.suptitle(
        f"fakecoord {report.get('strategy')} run: {len(rounds)} rounds, {clock}",
        fontsize="medium",
        **PLAIN,
    )
    if left_out:
        fig.text(
            0.01,
            0.002,
            f"{len(left_out)} more metrics not drawn: {', '.join(left_out)}",
            fontsize="x-small",
            wrap=True,
            **PLAIN,
        )
    for ax, name in zip(flat, metrics, strict=False):
        ys, clipped = _clipped(
            [report.get("initial_eval", {}).get(name)]
            + [r.get("eval", {}).get(name) for r in rounds]
        )
        values = [y for y in ys if numeric(y)]
        ax.plot(*_finite(xs, ys), marker="o", label=label)
        if any(r.get("baseline") for r in rounds):
            bys, more = _clipped(
                [report.get("initial_eval", {}).get(name)]
                + [((r.get("baseline") or {}).get("eval") or {}).get(name) for r in rounds]
            )
            clipped |= more
            values += [y for y in bys if numeric(y)]
            steps = (report.get("baseline") or {}).get("steps_per_round")
            ax.plot(*_finite(xs, bys), marker="s", linestyle="--",
                    label=f"single-worker baseline ({steps} steps/round)")  # fmt: skip
        mark_events(ax, report)
        failed = [r["round"] for r in rounds if r.get("eval_error")]
        for i, x in enumerate(failed):
            ax.axvline(x, color="orange", linestyle=":",
                       label="evaluation failed" if i == 0 else None)  # fmt: skip
        scale = _scale(ax, name, values)
        title = f"eval {name} per round" + (" (log scale)" if scale == "log" else "")
        ax.set_title(title + (f" (clipped to +-{PLOT_LIMIT:g})" if clipped else ""), **PLAIN)
        ax.set_xlabel("round")
        ax.set_ylabel(name, **PLAIN)
        _plain_legend(ax)
    ax_train = flat[len(metrics)]
    losses: list[float] = []
    any_clipped = False
    for peer in sorted({int(p) for r in rounds for p in r.get("peers", {})}):
        px, py = [], []
        for record in rounds:
            entry = record.get("peers", {}).get(str(peer), {})
            loss = entry.get("metrics", {}).get("loss") if entry.get("status") == "ok" else None
            px.append(record["round"])
            py.append(loss)
        py, clipped = _clipped(py)
        any_clipped |= clipped
        losses += [v for v in py if numeric(v)]
        ax_train.plot(*_finite(px, py), marker=".", label=f"peer {peer}")
    scale = _scale(ax_train, "loss", losses)
    ax_train.set_title(
        "training loss per peer"
        + (" (log scale)" if scale == "log" else "")
        + (f" (clipped to +-{PLOT_LIMIT:g})" if any_clipped else "")
    )
    ax_train.set_xlabel("round")
    ax_train.set_ylabel("training 'loss' metric, as the workload reports it")
    if mark_events(ax_train, report) or losses:
        _plain_legend(ax_train)
    ax_time = flat[len(metrics) + 1]
    rx = [r["round"] for r in rounds]
    worker = [r["timings"]["worker_call_seconds"] for r in rounds]
    coordinator = [r["timings"]["coordinator_seconds"] for r in rounds]
    ax_time.bar(rx, worker, label="in worker calls")
    ax_time.bar(rx, coordinator, bottom=worker, label="coordinator")
    transfer = [r["timings"].get("transfer_seconds", 0.0) for r in rounds]
    if any(transfer):
        bottom = [w + c for w, c in zip(worker, coordinator, strict=True)]
        ax_time.bar(rx, transfer, bottom=bottom, label="modelled transfer (--link)")
    ax_time.set_title("time per round" + (" (simulated)" if any(transfer) else " (wall clock)"))
    wires = [
        ((r.get("aggregate") or {}).get("wire") or {}).get("encoded_bytes_total") for r in rounds
    ]
    if any(numeric(b) for b in wires):
        ax_bytes = ax_time.twinx()
        ax_bytes.plot(*_finite(rx, [b / 1e6 if numeric(b) else None for b in wires]),
                      color="black", marker="x", label="MB on the wire")  # fmt: skip
        ax_bytes.set_ylabel("MB encoded (all peers)")
        top = max(b for b in wires if numeric(b)) / 1e6
        ax_bytes.set_ylim(0, 1.6 * top if top > 0 else 1.0)
        ax_bytes.legend(fontsize="small", loc="upper right")
        ax_time.set_ylim(
            0, 1.6 * max(w + c + t for w, c, t in zip(worker, coordinator, transfer, strict=True))
        )
    ax_time.set_xlabel("round")
    ax_time.set_ylabel("seconds")
    mark_events(ax_time, report)
    ax_time.legend(fontsize="small", loc="upper left")
    for ax in flat[:panels]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in flat[panels:]:
        ax.set_visible(False)
    fig.tight_layout(rect=(0, 0.03 if left_out else 0, 1, 1))
    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    try:
        with staged_file(path) as f:
            fig.savefig(f, dpi=100, format=suffix)
    finally:
        plt.close(fig)
    return left_out


def _finite(xs: list, ys: list) -> tuple[list, list]:
    """The points to draw: a missing or non-finite value becomes NaN, a gap in the line (a
    failed evaluation is never bridged)."""
    return list(xs), [float(y) if numeric(y) and math.isfinite(y) else math.nan for y in ys]


__all__ = [
    "MAX_METRIC_PANELS",
    "PLOT_LIMIT",
    "QuietView",
    "RichView",
    "RunView",
    "plotted_metrics",
    "summary_lines",
    "summary_table",
    "write_plot",
]
