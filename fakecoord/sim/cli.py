"""``python -m fakecoord run [options]``: the command line and ``--config FILE.toml``.

Every option can also be given in a TOML file (``--config run.toml``) under
its long name without the dashes (``inner-steps = 20``; ``_`` works as well
as ``-``); options on the command line override the file.  Relative paths in
the file are relative to the file's directory.  List-valued options take
TOML arrays (``fault = ["crash@1:2"]``, ``worker-cmd = ["python", "w.py"]``),
and ``config-json`` / ``state-dict-filter`` also take TOML tables.

Exit status: 0 when the run completed (faults included), 1 when it could not
run or stopped early (no worker starts, ``--max-failed-rounds`` rounds in a
row without a contributor), 2 for a bad command line, config file, setting
or input (found before anything is created; also an unreadable ``--resume``
checkpoint and an ``--eval-metric`` the workload does not return), 130
after Ctrl-C (every worker stopped; ``--resume DIR`` continues from the
last completed round).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import FakecoordError, RunFailed, SettingsError
from ..optional import require_for_run
from ..version import package_version
from .config import MERGE_POLICIES, SimConfig

RESUMABLE = ("rounds", "call_timeout", "start_timeout", "max_failed_rounds")
"""Settings that ``--resume`` may change; every other one comes from the checkpoint."""
RUN_ONLY = ("resume", "out", "report", "plot", "quiet", "stop_after_round", "config_file")
"""Options about this invocation, not the run's settings."""
# Relative paths follow one rule: they are relative to the directory fakecoord runs in, on
# the command line, in a TOML file and inside the workload's config (the workers run there
# too), so a TOML file's paths are kept as written (docs/simulation.md, "Config files").

DEFAULTS: dict[str, Any] = {
    "protocol": "diloco", "peers": 4, "rounds": 10, "inner_steps": 32, "seed": 0,
    "target_group_size": 4, "minimum_group_size": 1, "checkpoint_interval_rounds": 8,
    "aggregate": "mean", "codec": "fp32", "outer_lr": 0.7, "outer_momentum": 0.9,
    "nesterov": True, "diloco_backend": "worker", "merge_policy": "QualityWeightedEma",
    "reconcile": "root-ema", "canonical_weight": 0.75, "call_timeout": 60.0,
    "start_timeout": 60.0, "device": None, "microshards_per_step": 2, "eval_metric": "loss",
    "max_failed_rounds": 1, "baseline_steps": "total",
}  # fmt: skip


def argument_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = argparse.ArgumentParser(
        prog="python -m fakecoord run",
        description=(
            "Simulate a burn_p2p training network on this machine: one worker process per peer, "
            "real packs and artifacts on disk.  Without options: the demo workload, 4 peers, "
            "DiLoCo.  Guide: docs/simulation.md."
        ),
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"fakecoord {package_version()} (python -m fakecoord run)",
    )
    run = parser.add_argument_group("run")
    add = run.add_argument
    add(
        "--config",
        dest="config_file",
        metavar="FILE.toml",
        help="read options from a TOML file (keys: these option names); flags override it; "
        "relative paths in it are relative to the current directory, as on the command line",
    )
    add("--protocol", choices=("diloco", "windows"), help=f"(default {d['protocol']})")
    add("--peers", type=int, metavar="N", help=f"peers, one worker each (default {d['peers']})")
    add("--rounds", type=int, metavar="R", help=f"(default {d['rounds']})")
    add(
        "--inner-steps",
        type=int,
        metavar="H",
        help=f"optimizer steps per peer per round (default {d['inner_steps']})",
    )
    add(
        "--seed",
        type=int,
        metavar="S",
        help="seeds data, leases, dropouts and random/numpy/torch in every worker (default 0)",
    )
    add(
        "--threads-per-peer",
        type=int,
        metavar="N",
        help="threads for each worker's torch/OpenMP/MKL (default: max(1, cores // peers); "
        "0: the workload's own defaults)",
    )
    add(
        "--out",
        metavar="DIR",
        help="run directory: packs, artifacts, logs, checkpoint (default: a temporary one, "
        "removed after a successful run without faults, else kept and named)",
    )
    add("--resume", metavar="DIR", help="continue the run in DIR from its last completed round")
    add(
        "--report",
        metavar="FILE.json",
        help="also write the report here (and FILE.metrics.jsonl beside it)",
    )
    add(
        "--plot",
        metavar="FILE.png",
        help="draw every evaluated metric, per-peer training loss and round times",
    )
    add(
        "--baseline",
        action="store_true",
        default=None,
        help="also train one worker alone on the same total steps and batches",
    )
    add(
        "--baseline-steps",
        choices=("total", "per-peer"),
        help="baseline steps per round: all peers' steps and batches together (total, the "
        "default) or one peer's (per-peer); implies --baseline",
    )
    add(
        "--max-failed-rounds",
        type=int,
        metavar="K",
        help=f"stop after K rounds in a row without any contributing peer (default {d['max_failed_rounds']})",
    )
    add("--quiet", action="store_true", default=None, help="no progress bar or summary")
    add("--stop-after-round", type=int, help=argparse.SUPPRESS)

    workload = parser.add_argument_group("workload")
    add = workload.add_argument
    add("--factory", metavar="MOD:ATTR", help="your workload factory instead of the demo")
    add("--config-json", metavar="JSON", help="config passed to --factory")
    add(
        "--batches",
        metavar="FILE|DIR",
        help="batch refs for --factory: a JSON list of refs per peer (or one list dealt "
        "round-robin), or a directory whose files become one ref each",
    )
    add(
        "--worker-cmd",
        metavar="CMD",
        help="worker command replacing 'python -m worker' (4 flags are appended)",
    )
    add(
        "--device",
        help="override every device argument (default: the workload's own runtime_device from "
        "capability_probe, which is what the network sends; an override prints a warning)",
    )
    add(
        "--state-dict-filter",
        metavar="JSON",
        help='{"include_globs": [...], "exclude_globs": [...]}',
    )
    add(
        "--eval-metric",
        help=f"the evaluate metric the summary and progress follow (default {d['eval_metric']})",
    )
    add("--microshards-per-step", type=int, help=argparse.SUPPRESS)

    diloco = parser.add_argument_group("diloco")
    add = diloco.add_argument
    add("--aggregate", choices=("mean", "median"), help=f"(default {d['aggregate']})")
    add(
        "--codec",
        choices=("fp32", "fp16"),
        help=f"pseudo-gradient transport (default {d['codec']})",
    )
    add("--outer-lr", type=float, help=f"(default {d['outer_lr']})")
    add("--outer-momentum", type=float, help=f"(default {d['outer_momentum']})")
    add(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        help="Nesterov outer momentum (default on)",
    )
    add(
        "--target-group-size",
        type=int,
        metavar="N",
        help="a round's group: the first N peers by id as strings, as the network forms it "
        f"(default {d['target_group_size']})",
    )
    add(
        "--minimum-group-size",
        type=int,
        metavar="N",
        help="fewer participants or contributions fail the round, as in the network "
        f"(default {d['minimum_group_size']})",
    )
    add(
        "--checkpoint-interval-rounds",
        type=int,
        metavar="N",
        help="record a checkpoint head every N completed rounds, as the network publishes "
        f"one (default {d['checkpoint_interval_rounds']})",
    )
    add(
        "--link",
        action="append",
        metavar="[peer-N=]MBIT[/LATENCY_MS]",
        help="model each round's transfer over links of MBIT Mbit/s and LATENCY_MS one-way "
        "latency (all peers, or peer-N's; repeatable) and add it to the simulated clock",
    )
    add("--diloco-backend", choices=("worker", "command"), help=f"(default {d['diloco_backend']})")
    add(
        "--command",
        metavar="'PROGRAM ARGS'",
        help="checkpoint-command backend program; {job_manifest} and {result_manifest} are "
        "expanded (default: python -m worker.job with the run's factory and config)",
    )

    windows = parser.add_argument_group("windows")
    add = windows.add_argument
    add("--merge-policy", choices=MERGE_POLICIES, help=f"(default {d['merge_policy']})")
    add("--reconcile", choices=("replace", "root-ema"), help=f"(default {d['reconcile']})")
    add(
        "--canonical-weight",
        type=float,
        help=f"RootEma canonical_weight (default {d['canonical_weight']})",
    )

    faults = parser.add_argument_group("faults")
    add = faults.add_argument
    add(
        "--fault",
        action="append",
        metavar="SPEC",
        help="crash@PEER:ROUND (SIGKILL), hang@PEER:ROUND (SIGSTOP; the call timeout fires), "
        "error@PEER:ROUND, slow@PEER[:ROUNDS]=FACTOR (a straggler), drop@PEER[:ROUNDS]=P "
        "(dropout with probability P, seeded); PEER may be * for slow and drop; repeatable",
    )
    add("--call-timeout", type=float, metavar="S", help=f"per call (default {d['call_timeout']:g})")
    add(
        "--start-timeout",
        type=float,
        metavar="S",
        help=f"worker startup (default {d['start_timeout']:g})",
    )
    return parser  # fmt: skip


def option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Long option name without dashes (``inner-steps``) -> argparse dest."""
    names = {}
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and action.help != argparse.SUPPRESS:
                names[flag[2:].removeprefix("no-")] = action.dest
    names.pop("help", None)
    names.pop("version", None)
    return names


def read_toml(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options of a TOML config file, as argparse dests; raises :class:`SettingsError`."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        from ..optional import require

        tomllib = require("tomli", "--config on Python 3.10")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError(f"--config {str(path)!r}: cannot read TOML ({exc})") from None
    names = option_names(parser)
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = names.get(key.replace("_", "-"))
        if key in ("faults",):
            dest = "fault"
        if dest is None or dest == "config_file":
            known = ", ".join(sorted(k for k in names if k != "config"))
            raise SettingsError(f"--config {str(path)!r}: unknown key {key!r}; known keys: {known}")
        if dest in ("config_json", "state_dict_filter") and not isinstance(value, str):
            value = json.dumps(value)
        if dest in ("worker_cmd", "command") and isinstance(value, list):
            value = shlex.join(str(v) for v in value)
        if dest in ("fault", "link"):
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SettingsError(f"--config {str(path)!r}: {dest} must be a list of specs")
        out[dest] = value
    return out


def merged_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Flags over the TOML file's values (only flags actually given override)."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    if args.config_file is None:
        return given
    return {**read_toml(Path(args.config_file), parser), **given}


def _typed(options: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = options.get(name, DEFAULTS.get(name))
    if value is not None and kind is float and type(value) is int:
        value = float(value)
    if (
        value is not None
        and not isinstance(value, kind)
        or isinstance(value, bool)
        and kind is not bool
    ):
        flag = "--" + name.replace("_", "-")
        raise SettingsError(f"{flag}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def build_config(options: dict[str, Any]) -> SimConfig:
    """A :class:`SimConfig` from merged options; raises :class:`SettingsError`."""
    from .faults import parse_fault

    def parse_json(name: str) -> Any:
        text = options.get(name)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise SettingsError(f"--{name.replace('_', '-')} is not valid JSON: {exc}") from None

    def split(name: str) -> list[str] | None:
        text = options.get(name)
        if text is None:
            return None
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise SettingsError(
                f"--{name.replace('_', '-')}: cannot split {text!r} ({exc})"
            ) from None
        if not argv:
            raise SettingsError(f"--{name.replace('_', '-')}: must name a program")
        return argv

    reconcile: Any = "Replace"
    if _typed(options, "reconcile", str) == "root-ema":
        reconcile = {"RootEma": {"canonical_weight": _typed(options, "canonical_weight", float)}}
    batches = options.get("batches")
    return SimConfig(
        protocol=_typed(options, "protocol", str),
        peers=_typed(options, "peers", int),
        rounds=_typed(options, "rounds", int),
        inner_steps=_typed(options, "inner_steps", int),
        target_group_size=_typed(options, "target_group_size", int),
        minimum_group_size=_typed(options, "minimum_group_size", int),
        checkpoint_interval_rounds=_typed(options, "checkpoint_interval_rounds", int),
        link=list(options.get("link") or []),
        seed=_typed(options, "seed", int),
        factory=options.get("factory"),
        config=parse_json("config_json"),
        batches=str(Path(batches).resolve()) if batches else None,
        worker_cmd=split("worker_cmd"),
        faults=[parse_fault(s) for s in options.get("fault") or []],
        aggregate=_typed(options, "aggregate", str),
        codec=_typed(options, "codec", str),
        outer_lr=_typed(options, "outer_lr", float),
        outer_momentum=_typed(options, "outer_momentum", float),
        nesterov=_typed(options, "nesterov", bool),
        diloco_backend=_typed(options, "diloco_backend", str),
        command=split("command"),
        baseline=bool(options.get("baseline") or options.get("baseline_steps")),
        baseline_steps=_typed(options, "baseline_steps", str),
        merge_policy=_typed(options, "merge_policy", str),
        reconcile=reconcile,
        call_timeout=_typed(options, "call_timeout", float),
        start_timeout=_typed(options, "start_timeout", float),
        device=_typed(options, "device", str),
        microshards_per_step=_typed(options, "microshards_per_step", int),
        state_dict_filter=parse_json("state_dict_filter"),
        eval_metric=_typed(options, "eval_metric", str),
        threads_per_peer=options.get("threads_per_peer"),
        max_failed_rounds=_typed(options, "max_failed_rounds", int),
    )


def resume_config(options: dict[str, Any], out: Path) -> SimConfig:
    """The checkpoint's settings, with ``RESUMABLE`` ones taken from the options."""
    from .engine import CHECKPOINT_NAME

    try:
        data = json.loads((out / CHECKPOINT_NAME).read_text(encoding="utf-8"))
        config = SimConfig.from_json(data["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SettingsError(f"--resume {out}: no readable {CHECKPOINT_NAME} ({exc})") from None
    for name in RESUMABLE:
        if options.get(name) is not None:
            setattr(config, name, options[name])
    return config


def say(text: str) -> None:
    print(f"fakecoord: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fakecoord run ...``; returns the exit status."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and (
        threading.current_thread() is threading.main_thread()
    ):
        # Started with SIGINT ignored (a script's `cmd &`): still stop on it, as the workers
        # do, so that a SIGINT to the process group interrupts the run (exit 130, resumable).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argument_parser()
    args = parser.parse_args(argv)
    try:
        options = merged_options(args, parser)
        if options.get("resume") and options.get("out"):
            if Path(options["out"]).resolve() != Path(options["resume"]).resolve():
                raise SettingsError("--resume DIR already names the run directory; drop --out")
        out: Path | None
        if options.get("resume"):
            out = Path(options["resume"])
            config = resume_config(options, out)
            ignored = [
                "--" + name.replace("_", "-")
                for name, value in vars(args).items()
                if value is not None and name not in (*RESUMABLE, *RUN_ONLY)
            ]
            if ignored:
                say(f"the checkpoint's settings are kept; ignoring {', '.join(ignored)}")
        else:
            out = Path(options["out"]) if options.get("out") else None
            config = build_config(options)
        require_for_run(progress=not options.get("quiet"), plot=bool(options.get("plot")))
        return _run(config, options, out)
    except SettingsError as exc:
        say(str(exc))
        return 2


def _run(config: SimConfig, options: dict[str, Any], out: Path | None) -> int:
    from .engine import CHECKPOINT_NAME, Engine
    from .report import RichView, RunView, write_plot

    quiet = bool(options.get("quiet"))
    engine = Engine(
        config,
        out or "unused",
        view=RunView() if quiet else RichView(),
        resume=bool(options.get("resume")),
        stop_after_round=options.get("stop_after_round"),
    )
    engine.prepare()  # SettingsError -> exit 2 before anything exists
    temporary = out is None
    if temporary:
        out = Path(tempfile.mkdtemp(prefix="fakecoord-run-"))
    assert out is not None
    engine.out = out.resolve()
    status, report = 0, None
    try:
        report = engine.run()
    except KeyboardInterrupt:
        done = engine.state.completed_rounds if engine.state else 0
        if not (out / CHECKPOINT_NAME).exists() or done == 0 and temporary:
            if temporary:
                shutil.rmtree(out, ignore_errors=True)
            say("interrupted before the first round completed; all workers stopped")
        else:
            say(
                f"interrupted; all workers stopped. {out} holds the run after round {done}: "
                f"resume with --resume {out}"
            )
        return 130
    except SettingsError as exc:
        say(str(exc))
        if temporary:
            shutil.rmtree(out, ignore_errors=True)
        return 2
    except RunFailed as exc:
        say(str(exc))
        report, status = engine.report, 1
    except FakecoordError as exc:
        say(str(exc))
        say(f"run directory kept for inspection (worker logs in {out / 'logs'}): {out}")
        return 1
    _outputs(report, options, write_plot)
    if status and not temporary:
        say(f"run directory: {out} (report, worker logs, checkpoint)")
    elif status:
        say(f"run directory kept for inspection (report and worker logs): {out}")
    elif temporary and report.get("faults"):
        # A fault's message named a worker log: keep the logs it names.
        say(f"run directory kept: the worker logs named above are in {out / 'logs'}")
    elif temporary and report.get("completed_rounds") == config.rounds:
        shutil.rmtree(out, ignore_errors=True)
    elif not quiet:
        print(f"run directory: {out}")
    return status


def _outputs(report: dict, options: dict[str, Any], write_plot: Any) -> None:
    from ..files import write_output
    from .record import metrics_lines

    for name in ("report", "plot"):  # e.g. --plot runs/loss.png: runs/ is made if missing
        if options.get(name):
            Path(options[name]).parent.mkdir(parents=True, exist_ok=True)
    if options.get("report"):
        path = Path(options["report"])
        write_output(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
        lines = metrics_lines(report)
        path.with_suffix(".metrics.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8"
        )
    if options.get("plot"):
        write_plot(report, options["plot"])


__all__ = ["DEFAULTS", "RESUMABLE", "argument_parser", "build_config", "main", "read_toml"]
