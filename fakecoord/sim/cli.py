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
or input (found before anything is created: also an unwritable ``--report``,
``--plot`` or ``--out``, a damaged or foreign ``--resume`` checkpoint, a run
directory another run holds, and an ``--eval-metric`` the workload does not
return), 130 after Ctrl-C and 143 after SIGTERM (every worker stopped and
reaped; ``--resume DIR`` continues from the last completed round).  A run
that completed but whose ``--report`` or ``--plot`` still could not be
written exits 1 and names its run directory, which is kept.

Every option is one :class:`Opt` entry of :data:`OPTIONS`: its flag, its
TOML key and its type; both readers are derived from it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import wire
from ..errors import FakecoordError, PolicyError, RunFailed, SettingsError, one_line
from ..network.aggregation import AGGREGATION_NAMES, AGGREGATIONS
from ..network.codecs import CODEC_NAMES, CODECS
from ..network.policy import DiLoCoPolicy
from ..optional import require_for_run
from ..signals import Terminated, interrupt_status, sigterm_raises
from ..version import package_version
from .config import MERGE_POLICIES, SimConfig
from .faults import MAX_SLOWDOWN, fault_help
from .rundir import RunLock, check_out_dir, check_output_file, check_plot_file, is_stream

RESUMABLE = ("rounds", "call_timeout", "start_timeout", "max_failed_rounds", "start_method")
"""Settings that ``--resume`` may change; every other one comes from the checkpoint."""
RUN_ONLY = ("resume", "out", "report", "plot", "quiet", "stop_after_round", "config_file")
"""Options about this invocation, not the run's settings."""


@dataclass(frozen=True)
class Opt:
    """One option of ``python -m fakecoord run``: its flag, its TOML key and its type, once.

    ``kind`` decides both readers: ``int``, ``float`` and ``str`` (argparse
    converts the flag; TOML must hold that type, an integer is accepted for a
    float), ``path`` (a string; relative to the TOML file's directory),
    ``flag`` (``--X``; TOML ``true``/``false`` only), ``switch`` (``--X`` /
    ``--no-X``; TOML ``true``/``false`` only), ``specs`` (repeatable; TOML a
    string or an array of strings), ``json`` (JSON text; TOML also a table or
    array) and ``argv`` (a shell-split command; TOML also an array of
    strings).  ``hidden`` options have no help and no TOML key.
    """

    name: str
    kind: str
    group: str
    help: str = ""
    default: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    dest: str | None = None
    hidden: bool = False

    @property
    def key(self) -> str:
        return self.dest or self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return f"--{self.name}"


KIND_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "path": "a path string (not empty, no NUL)",
    "flag": "a boolean (true or false, not a string)",
    "switch": "a boolean (true or false, not a string)",
    "specs": "a string or an array of strings",
    "json": "JSON text, a table or an array",
    "argv": "a command string or an array of strings",
    "policy": "a file name, JSON text or a table",
}
GROUP_HELP = {
    "diloco": "The network's DiLoCoPolicy (--policy, or a [policy] table in --config); the flags "
    "below are shorthands that override its fields.  Defaults: the network's (Fp16, Mean, SGD "
    "lr 1.0 without momentum, 32 inner steps).",
}

# fmt: off
OPTIONS: tuple[Opt, ...] = (
    Opt("config", "path", "run", "read options from a TOML file (keys: these option names); "
        "flags override it; relative paths in it are relative to the current directory, as on "
        "the command line", metavar="FILE.toml", dest="config_file"),
    Opt("protocol", "str", "run", "(default {default})", "diloco", choices=("diloco", "windows")),
    Opt("peers", "int", "run", "peers, one worker each (default {default})", 4, metavar="N"),
    Opt("workers", "int", "run", "host the peers on N worker processes, each peer its own model "
        "handles (refused for a workload failing the conformance suite's handle-independence "
        "checks)", metavar="N"),
    Opt("rounds", "int", "run", "(default {default})", 10, metavar="R"),
    Opt("inner-steps", "int", "run", "optimizer steps per peer per round: the policy's "
        "num_inner_steps (default: the network's, 32; windows: 20)", metavar="H"),
    Opt("seed", "int", "run", "seeds data, leases, dropouts and random/numpy/torch in every "
        "worker; 0 to 2**32-1, the range numpy, torch and random all accept (default {default})",
        0, metavar="S"),
    Opt("threads-per-peer", "int", "run", "threads for each worker's torch/OpenMP/MKL (default: "
        "max(1, cores // peers); 0: the workload's own defaults)", metavar="N"),
    Opt("out", "path", "run", "run directory: packs, artifacts, logs, checkpoint (default: a "
        "temporary one, removed after a successful run without faults, else kept and named)",
        metavar="DIR"),
    Opt("resume", "path", "run", "continue the run in DIR from its last completed round",
        metavar="DIR"),
    Opt("report", "path", "run", "also write the report here (and FILE.metrics.jsonl beside it)",
        metavar="FILE.json"),
    Opt("plot", "path", "run", "draw every evaluated metric, per-peer training loss and round "
        "times (PNG, PDF, SVG...: the extension decides)", metavar="FILE.png"),
    Opt("baseline", "flag", "run", "also train one worker alone on the same total steps and "
        "batches"),
    Opt("baseline-steps", "str", "run", "baseline steps per round: all peers' steps and batches "
        "together (total, the default) or one peer's (per-peer); implies --baseline", "total",
        choices=("total", "per-peer")),
    Opt("max-failed-rounds", "int", "run", "stop after K rounds in a row without any contributing "
        "peer (default {default})", 1, metavar="K"),
    Opt("quiet", "flag", "run", "no progress bar or summary"),
    Opt("stop-after-round", "int", "run", hidden=True),
    Opt("factory", "str", "workload", "your workload factory instead of the demo",
        metavar="MOD:ATTR"),
    Opt("config-json", "json", "workload", "config passed to --factory", metavar="JSON"),
    Opt("batches", "path", "workload", "batch refs for --factory: a JSON list of refs per peer "
        "(or one list dealt round-robin), or a directory whose files become one ref each",
        metavar="FILE|DIR"),
    Opt("worker-cmd", "argv", "workload", "worker command replacing 'python -m worker' (4 flags "
        "are appended)", metavar="CMD"),
    Opt("device", "str", "workload", "override every device argument (default: the workload's "
        "own runtime_device from capability_probe, which is what the network sends; an override "
        "prints a warning)"),
    Opt("state-dict-filter", "json", "workload", '{{"include_globs": [...], "exclude_globs": '
        '[...]}}', metavar="JSON"),
    Opt("eval-metric", "str", "workload", "the evaluate metric the summary and progress follow "
        "(default {default})", "loss"),
    Opt("microshards-per-step", "int", "workload", default=2, hidden=True),
    Opt("policy", "policy", "diloco", "a DiLoCoPolicy in its serde JSON shape, as an experiment "
        "revision carries it (e.g. '{{\"codec\": {{\"BlockwiseInt8\": {{\"block_size\": 64}}}}}}'); "
        "absent fields take the network's defaults", metavar="FILE|JSON"),
    Opt("aggregate", "str", "diloco", "the policy's aggregation_policy: " + ", ".join(
        f"{e.name} = {e.tag}" for e in AGGREGATIONS), choices=AGGREGATION_NAMES),
    Opt("codec", "str", "diloco", "the policy's pseudo-gradient codec: " + ", ".join(
        f"{e.name} = {json.dumps(e.serde_json(e.shorthand))}" for e in CODECS
    ).replace("{", "{{").replace("}", "}}"), choices=CODEC_NAMES),
    Opt("outer-lr", "float", "diloco", "outer SGD learning rate (default: the policy's, 1.0)"),
    Opt("outer-momentum", "float", "diloco", "outer momentum (any value, even 0, is refused by "
        "the network for Python workloads: needs --beyond-network)"),
    Opt("nesterov", "switch", "diloco", "Nesterov outer momentum (default off; on needs "
        "--beyond-network)"),
    Opt("beyond-network", "flag", "diloco", "run an outer optimizer the network refuses for "
        "Python workloads (momentum, Nesterov, weight decay: the DiLoCo paper's setting) as the "
        "simulation's own; the header, summary and report say so"),
    Opt("target-group-size", "int", "diloco", "a round's group: the first N peers by id as "
        "strings, as the network forms it (the policy's target_group_size; default: the "
        "network's, 4)", metavar="N"),
    Opt("minimum-group-size", "int", "diloco", "fewer participants or contributions fail the "
        "round, as in the network (the policy's minimum_group_size; default: the network's, 1)",
        metavar="N"),
    Opt("checkpoint-interval-rounds", "int", "diloco", "record a checkpoint head every N "
        "completed rounds, as the network publishes one (the policy's "
        "checkpoint_interval_rounds; default: the network's, 8)", metavar="N"),
    Opt("link", "specs", "diloco", "model each round's transfer over links of MBIT Mbit/s and "
        "LATENCY_MS one-way latency (all peers, or peer-N's; repeatable) and add it to the "
        "simulated clock", metavar="[peer-N=]MBIT[/LATENCY_MS]"),
    Opt("diloco-backend", "str", "diloco", "(default {default})", "worker",
        choices=("worker", "command")),
    Opt("command", "argv", "diloco", "checkpoint-command backend program; {{job_manifest}} and "
        "{{result_manifest}} are expanded (default: python -m worker.job with the run's factory "
        "and config)", metavar="'PROGRAM ARGS'"),
    Opt("merge-policy", "str", "windows", "(default {default})", "QualityWeightedEma",
        choices=MERGE_POLICIES),
    Opt("reconcile", "str", "windows", "(default {default})", "root-ema",
        choices=("replace", "root-ema")),
    Opt("canonical-weight", "float", "windows", "RootEma canonical_weight (default {default})",
        0.75),
    Opt("fault", "specs", "faults", fault_help(), metavar="SPEC"),
    Opt("call-timeout", "float", "faults", "per call (default {default:g})", 60.0, metavar="S"),
    Opt("start-timeout", "float", "faults", "worker startup (default {default:g})", 60.0,
        metavar="S"),
    Opt("start-method", "str", "faults", "fork-server (the default where it works: Linux, "
        "'python -m worker'): fork workers from one process that imported torch once; spawn: a "
        "fresh interpreter each", "fork-server", choices=("fork-server", "spawn")),
)
# fmt: on
BY_KEY = {opt.key: opt for opt in OPTIONS}
DEFAULTS: dict[str, Any] = {o.key: o.default for o in OPTIONS if o.default is not None}
TOML_ALIASES = {"faults": "fault"}


def argument_parser() -> argparse.ArgumentParser:
    """The parser, one argument per :data:`OPTIONS` entry."""
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
    groups: dict[str, Any] = {}
    for opt in OPTIONS:
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group, GROUP_HELP.get(opt.group))
        text = opt.help.format(default=opt.default, slow_max=MAX_SLOWDOWN)
        kwargs: dict[str, Any] = {
            "dest": opt.key,
            "help": argparse.SUPPRESS if opt.hidden else text,
        }
        if opt.kind == "flag":
            kwargs.update(action="store_true", default=None)
        elif opt.kind == "switch":
            kwargs.update(action=argparse.BooleanOptionalAction)
        elif opt.kind == "specs":
            kwargs.update(action="append", metavar=opt.metavar)
        else:
            kwargs.update(type=_ARGPARSE_TYPES.get(opt.kind, str), metavar=opt.metavar)
            kwargs.update(choices=opt.choices)
        groups[opt.group].add_argument(opt.flag, **kwargs)
    return parser


_ARGPARSE_TYPES: dict[str, Any] = {"int": int, "float": float}


def read_policy(value: Any, base: Path | None = None) -> Any:
    """``--policy FILE|JSON`` (or a TOML ``[policy]`` table): the policy's JSON value, checked
    as serde reads it (absent fields are the network's defaults); raises :class:`SettingsError`."""
    try:
        if isinstance(value, dict):
            return DiLoCoPolicy.from_json(value).to_json()
        if not isinstance(value, str):
            raise SettingsError(
                f"--policy: expected a file name, JSON text or a table, got {value!r}"
            )
        if value.lstrip().startswith("{"):
            return DiLoCoPolicy.from_text(value).to_json()
        path = Path(value) if base is None or Path(value).is_absolute() else base / value
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise SettingsError(f"--policy {value!r}: cannot read it ({exc})") from None
        return DiLoCoPolicy.from_text(text).to_json()
    except PolicyError as exc:
        raise SettingsError(f"--policy: {exc}") from None


def coerce(opt: Opt, value: Any, where: str) -> Any:
    """``value`` as ``opt``'s type (an integer becomes a float, arrays and tables become the
    flag's text); raises :class:`SettingsError` naming ``where`` and the expected type."""
    kind = opt.kind

    def shown() -> str:
        return one_line(repr(value), 80)

    def refuse() -> SettingsError:
        return SettingsError(f"{where}: expected {KIND_NAMES[kind]}, got {shown()}")

    if kind == "int":
        if type(value) is not int:
            raise refuse()
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise refuse()
        value = float(value)
    elif kind in ("str", "path"):
        if not isinstance(value, str) or kind == "path" and (not value or "\x00" in value):
            raise refuse()
        if opt.choices is not None and value not in opt.choices:
            raise SettingsError(f"{where}: expected one of {', '.join(opt.choices)}, got {shown()}")
    elif kind in ("flag", "switch"):
        if not isinstance(value, bool):
            raise refuse()
    elif kind == "specs":
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise refuse()
    elif kind == "argv":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = shlex.join(value)
        elif not isinstance(value, str):
            raise refuse()
    elif kind == "policy":
        if not isinstance(value, (str, dict)):
            raise refuse()
    elif kind == "json" and not isinstance(value, str):
        try:
            value = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise refuse() from None
    return value


def read_toml(path: Path) -> dict[str, Any]:
    """The options of a TOML config file, by key; raises :class:`SettingsError`."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        from ..optional import require

        tomllib = require("tomli", "--config on Python 3.10")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError(f"--config {str(path)!r}: cannot read TOML ({exc})") from None
    by_name = {o.name: o for o in OPTIONS if not o.hidden and o.key != "config_file"}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("_", "-")
        opt = by_name.get(TOML_ALIASES.get(name, name))
        if opt is None:
            known = ", ".join(sorted(by_name))
            raise SettingsError(
                f"--config {str(path)!r}: unknown key {one_line(repr(key), 80)}; known keys: {known}"
            )
        value = coerce(opt, value, f"--config {str(path)!r}: {one_line(key, 80)} ({opt.flag})")
        # One rule for relative paths: the current directory, on the command line, in a TOML
        # file and in the workload's config (the workers run there too); docs/simulation.md.
        if opt.kind == "policy":
            value = read_policy(value)
        out[opt.key] = value
    return out


def merged_options(args: argparse.Namespace) -> dict[str, Any]:
    """Flags over the TOML file's values (only flags actually given override)."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    if args.config_file is None:
        return given
    return {**read_toml(Path(args.config_file)), **given}


def option(options: dict[str, Any], key: str) -> Any:
    """The option's value (or its default), checked against its type in :data:`OPTIONS`."""
    value = options.get(key, DEFAULTS.get(key))
    if value is None:
        return None
    opt = BY_KEY[key]
    return coerce(opt, value, opt.flag)


def build_config(options: dict[str, Any]) -> SimConfig:
    """A :class:`SimConfig` from merged options; raises :class:`SettingsError`."""
    from .faults import parse_fault

    def parse_json(name: str) -> Any:
        text = option(options, name)
        if text is None:
            return None
        try:
            return wire.validate_value(json.loads(text), max_depth=None)
        except (ValueError, RecursionError, FakecoordError) as exc:
            raise SettingsError(f"--{name.replace('_', '-')} is not valid JSON: {exc}") from None

    def split(name: str) -> list[str] | None:
        text = option(options, name)
        if text is None:
            return None
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise SettingsError(
                f"--{name.replace('_', '-')}: cannot split {one_line(repr(text), 80)} ({exc})"
            ) from None
        if not argv:
            raise SettingsError(f"--{name.replace('_', '-')}: must name a program")
        return argv

    reconcile: Any = "Replace"
    if option(options, "reconcile") == "root-ema":
        reconcile = {"RootEma": {"canonical_weight": option(options, "canonical_weight")}}
    batches = option(options, "batches")
    return SimConfig(
        protocol=option(options, "protocol"),
        peers=option(options, "peers"),
        rounds=option(options, "rounds"),
        inner_steps=option(options, "inner_steps"),
        target_group_size=option(options, "target_group_size"),
        minimum_group_size=option(options, "minimum_group_size"),
        checkpoint_interval_rounds=option(options, "checkpoint_interval_rounds"),
        link=list(option(options, "link") or []),
        seed=option(options, "seed"),
        factory=option(options, "factory"),
        config=parse_json("config_json"),
        batches=str(Path(batches).resolve()) if batches else None,
        worker_cmd=split("worker_cmd"),
        faults=[parse_fault(s) for s in option(options, "fault") or []],
        policy=read_policy(option(options, "policy"))
        if options.get("policy") is not None
        else None,
        beyond_network=bool(option(options, "beyond_network")),
        aggregate=option(options, "aggregate"),
        codec=option(options, "codec"),
        outer_lr=option(options, "outer_lr"),
        outer_momentum=option(options, "outer_momentum"),
        nesterov=option(options, "nesterov"),
        diloco_backend=option(options, "diloco_backend"),
        command=split("command"),
        baseline=bool(option(options, "baseline") or options.get("baseline_steps")),
        baseline_steps=option(options, "baseline_steps"),
        merge_policy=option(options, "merge_policy"),
        reconcile=reconcile,
        call_timeout=option(options, "call_timeout"),
        start_timeout=option(options, "start_timeout"),
        device=option(options, "device"),
        microshards_per_step=option(options, "microshards_per_step"),
        state_dict_filter=parse_json("state_dict_filter"),
        eval_metric=option(options, "eval_metric"),
        threads_per_peer=option(options, "threads_per_peer"),
        max_failed_rounds=option(options, "max_failed_rounds"),
        start_method=option(options, "start_method"),
        workers=option(options, "workers"),
    )


def resume_config(options: dict[str, Any], out: Path) -> SimConfig:
    """The checkpoint's settings (the whole checkpoint validated first), with ``RESUMABLE``
    ones taken from the options."""
    from .engine import CHECKPOINT_NAME
    from .record import read_checkpoint

    data = read_checkpoint(out / CHECKPOINT_NAME, f"--resume {out}")
    config = SimConfig.from_json(data["config"])
    for name in RESUMABLE:
        if options.get(name) is not None:
            setattr(config, name, option(options, name))
    return config


def say(text: str) -> None:
    print(f"fakecoord: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fakecoord run ...``; returns the exit status (SIGTERM is handled as Ctrl-C)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and (
        threading.current_thread() is threading.main_thread()
    ):
        # Started with SIGINT ignored (a script's `cmd &`): still stop on it, as the workers
        # do, so that a SIGINT to the process group interrupts the run (exit 130, resumable).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argument_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_raises():
            return _main(args)
    except KeyboardInterrupt as exc:  # before any worker started
        say("terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted")
        return interrupt_status(exc)


def _main(args: argparse.Namespace) -> int:
    try:
        options = merged_options(args)
        if options.get("resume") and options.get("out"):
            resume, out_dir = option(options, "resume"), option(options, "out")
            if Path(resume).resolve() != Path(out_dir).resolve():
                raise SettingsError("--resume DIR already names the run directory; drop --out")
        out: Path | None
        if options.get("resume"):
            out = check_out_dir("--resume", option(options, "resume"))
            config = resume_config(options, out)
            ignored = [
                "--" + name.replace("_", "-")
                for name, value in vars(args).items()
                if value is not None and name not in (*RESUMABLE, *RUN_ONLY)
            ]
            if ignored:
                say(f"the checkpoint's settings are kept; ignoring {', '.join(ignored)}")
        else:
            out = check_out_dir("--out", option(options, "out")) if options.get("out") else None
            config = build_config(options)
        check_outputs(options)
        require_for_run(progress=not options.get("quiet"), plot=bool(options.get("plot")))
        return _run(config, options, out)
    except SettingsError as exc:
        say(str(exc))
        return 2


def check_outputs(options: dict[str, Any]) -> None:
    """Refuse a ``--report`` or ``--plot`` that could not be written, before the run starts."""
    if options.get("report"):
        check_output_file("--report", option(options, "report"), beside=".metrics.jsonl")
    if options.get("plot"):
        check_plot_file(option(options, "plot"))


def _run(config: SimConfig, options: dict[str, Any], out: Path | None) -> int:
    from .engine import Engine
    from .report import RichView, RunView

    quiet = bool(options.get("quiet"))
    resume = bool(options.get("resume"))
    engine = Engine(
        config,
        out or "unused",
        view=RunView() if quiet else RichView(),
        resume=resume,
        stop_after_round=options.get("stop_after_round"),
    )
    engine.prepare()  # SettingsError -> exit 2 before anything exists
    temporary = out is None
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="fakecoord-run-"))
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(f"--out {str(out)!r}: cannot create it ({exc})") from None
    lock = RunLock(out, "--resume" if resume else "--out")
    lock.acquire()
    try:
        engine.out = out.resolve()
        return _drive(engine, config, options, out, temporary)
    finally:
        lock.release()


def _drive(
    engine: Any, config: SimConfig, options: dict[str, Any], out: Path, temporary: bool
) -> int:
    from .engine import CHECKPOINT_NAME

    quiet = bool(options.get("quiet"))
    status, report = 0, None
    try:
        report = engine.run()
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        done = engine.state.completed_rounds if engine.state else 0
        if not (out / CHECKPOINT_NAME).exists() or done == 0 and temporary:
            if temporary:
                shutil.rmtree(out, ignore_errors=True)
            say(f"{what} before the first round completed; all workers stopped")
        else:
            say(
                f"{what}; all workers stopped. {out} holds the run after round {done}: "
                f"resume with --resume {out}"
            )
        return interrupt_status(exc)
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
    failed = _outputs(report, options)
    if failed:
        say(f"{failed}; run directory kept, with report.json and metrics.jsonl: {out}")
        return 1
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


def _outputs(report: dict, options: dict[str, Any]) -> str | None:
    """Write ``--report`` (atomically, with FILE.metrics.jsonl) and ``--plot``; returns what
    failed, or None."""
    from ..files import write_bytes, write_output
    from .record import metrics_lines
    from .report import MAX_METRIC_PANELS, write_plot

    if options.get("report"):
        path = Path(option(options, "report"))
        try:
            stream = is_stream(path)  # /dev/stdout, a FIFO: the report alone
            write_output(path, (json.dumps(report, indent=2, allow_nan=False) + "\n").encode())
            if not stream:
                lines = metrics_lines(report)
                text = "".join(json.dumps(line, allow_nan=False) + "\n" for line in lines)
                write_bytes(path.with_suffix(".metrics.jsonl"), text.encode("utf-8"))
        except (OSError, ValueError, TypeError) as exc:
            return f"cannot write --report {str(path)!r} ({exc})"
    if options.get("plot"):
        try:
            left_out = write_plot(report, option(options, "plot"))
        except Exception as exc:  # matplotlib's failures have no common base class
            return f"cannot draw --plot {options['plot']!r} ({type(exc).__name__}: {exc})"
        if left_out:
            say(
                f"--plot: {len(left_out)} metrics left out (the plot draws at most "
                f"{MAX_METRIC_PANELS}): {', '.join(left_out)}"
            )
    return None


__all__ = [
    "DEFAULTS",
    "OPTIONS",
    "RESUMABLE",
    "Opt",
    "argument_parser",
    "build_config",
    "coerce",
    "main",
    "read_toml",
]
