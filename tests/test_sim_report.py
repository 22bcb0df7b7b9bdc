"""The run's plot and console output: events marked on every panel, honest labels, tables laid
out for a pipe without truncation."""

from __future__ import annotations

import io

import pytest
from matplotlib.figure import Figure

from fakecoord.sim import report as report_module
from fakecoord.sim.report import console, summary_table, write_plot


def fake_report() -> dict:
    rounds = []
    for r in (1, 2, 3):
        rounds.append(
            {
                "round": r,
                "eval": {"loss": 1.0 / r, "accuracy": 0.2 * r},
                "eval_value": 1.0 / r,
                "peers": {
                    "0": {"status": "ok", "metrics": {"loss": 1.5 / r}},
                    "1": {"status": "failed" if r == 2 else "ok", "metrics": {"loss": 1.4 / r}},
                },  # fmt: skip
                "dropped": [],
                "timings": {
                    "worker_call_seconds": 1.0,
                    "coordinator_seconds": 0.2,
                    "round_seconds": 1.3,
                },  # fmt: skip
            }
        )
    return {
        "strategy": "diloco",
        "settings": {"peers": 2},
        "eval_metric": "loss",
        "initial_eval": {"loss": 2.0, "accuracy": 0.1},
        "initial_eval_value": 2.0,
        "rounds": rounds,
        "faults": [{"round": 2, "peer": 1, "kind": "crash", "spec": "crash@1:2"}],
        "resumed": [{"after_round": 1}],
        "timings": {"wall_seconds": 4.0},
    }


def vertical_lines(ax) -> list[float]:
    """The x of each axvline on ``ax`` (a line from y=0 to y=1 in axes coordinates)."""
    return sorted(
        float(line.get_xdata()[0])
        for line in ax.lines
        if list(line.get_ydata()) == [0, 1] and len(set(line.get_xdata())) == 1
    )


def test_faults_and_resumes_are_marked_on_every_panel(tmp_path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    figures: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figures.append(self))
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    write_plot(fake_report(), tmp_path / "p.png")
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.has_data()]
    assert len(panels) == 4  # loss, accuracy, training loss, time
    for ax in panels:
        assert vertical_lines(ax) == [1.5, 2.0], ax.get_title()
        labels = ax.get_legend_handles_labels()[1]
        assert "fault" in labels and "resumed" in labels, ax.get_title()
    (train,) = [ax for ax in panels if ax.get_title().startswith("training loss")]
    assert "mean" not in train.get_ylabel() and "as the workload reports it" in train.get_ylabel()
    plt.close(fig)


def test_piped_output_is_laid_out_wide_and_keeps_table_headers(monkeypatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    out = console()
    assert not out.is_terminal and out.width == report_module.PIPED_WIDTH
    buffer = io.StringIO()
    out.file = buffer
    out.print(summary_table(fake_report()))
    text = buffer.getvalue()
    for header in ("round", "eval loss", "peers ok", "round s", "in workers", "faults"):
        assert header in text
    assert max(len(line) for line in text.splitlines()) > 80  # not wrapped at 80 columns
    assert "…" not in text


@pytest.mark.parametrize("columns", ["60"])
def test_columns_still_wins_when_set(monkeypatch, columns) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    assert console().width == int(columns)


@pytest.mark.parametrize(
    ("strategy", "says", "never"),
    [("windows", "Window merging trades", "DiLoCo"), ("diloco", "DiLoCo trades", "Window")],
)
def test_the_baseline_note_names_the_runs_own_strategy(strategy, says, never) -> None:
    from fakecoord.sim.report import summary_lines

    report = {
        **fake_report(),
        "strategy": strategy,
        "settings": {"peers": 2, "inner_steps": 5},
        "baseline": {"final_eval_value": 0.5, "description": "one worker", "steps_per_round": 10},
    }
    text = "\n".join(summary_lines(report))
    assert says in text and never not in text
