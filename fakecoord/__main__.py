"""``python -m fakecoord run [options]``: a local multi-peer training simulation.

With no options it trains the built-in demo workload with 4 peers (DiLoCo).
``python -m fakecoord`` without a subcommand means ``run``.  Exit status: 0
when the run completed (faults included), 1 when it could not run (workers
that never start, no peer finishing any round, an unusable run directory),
2 for a bad command line or settings (also an unreadable ``--resume``
checkpoint), 130 after Ctrl-C (every worker stopped; ``--resume DIR``
continues from the last completed round).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import FakecoordError

RESUMABLE = ("rounds", "call_timeout", "start_timeout")
"""Settings that ``--resume`` may change; every other one comes from the checkpoint."""

RUN_ONLY = ("resume", "out", "report", "plot", "quiet", "stop_after_round")
"""Options about this invocation, not the run's settings."""

DEFAULTS: dict[str, Any] = {
    "protocol": "diloco",
    "peers": 4,
    "rounds": 10,
    "inner_steps": 20,
    "seed": 0,
    "aggregate": "mean",
    "codec": "fp32",
    "outer_lr": 0.7,
    "outer_momentum": 0.9,
    "nesterov": True,
    "diloco_backend": "worker",
    "merge_policy": "QualityWeightedEma",
    "reconcile": "root-ema",
    "canonical_weight": 0.75,
    "call_timeout": 60.0,
    "start_timeout": 60.0,
    "device": "cpu",
    "microshards_per_step": 2,
    "eval_metric": "loss",
}


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fakecoord run",
        description=(
            "Simulate a burn_p2p training network on this machine: one worker process per peer, "
            "real packs and artifacts on disk.  Without options: the demo workload, 4 peers, DiLoCo."
        ),
    )
    d = DEFAULTS
    run = parser.add_argument_group("run")
    run.add_argument("--protocol", choices=("diloco", "windows"), help=f"(default {d['protocol']})")
    run.add_argument(
        "--peers", type=int, metavar="N", help=f"peers, one worker each (default {d['peers']})"
    )
    run.add_argument("--rounds", type=int, metavar="R", help=f"(default {d['rounds']})")
    run.add_argument(
        "--inner-steps", type=int, metavar="H",
        help=f"optimizer steps per peer per round (default {d['inner_steps']})",
    )  # fmt: skip
    run.add_argument(
        "--seed", type=int, metavar="S", help=f"data, model and leases (default {d['seed']})"
    )
    run.add_argument(
        "--out",
        metavar="DIR",
        help="run directory: packs, artifacts, logs, checkpoint (default: a temporary one, removed after success)",
    )
    run.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR from its last completed round"
    )
    run.add_argument("--report", metavar="FILE.json", help="also write the report here")
    run.add_argument(
        "--plot", metavar="FILE.png", help="draw eval loss per round and per-peer training loss"
    )
    run.add_argument(
        "--baseline",
        action="store_true",
        default=None,
        help="also train one peer with the same total steps, alongside",
    )
    run.add_argument(
        "--baseline-steps", choices=("total", "per-peer"),
        help="baseline steps per round: all peers' steps and batches together (total, the default) "
        "or one peer's (per-peer); implies --baseline",
    )  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    run.add_argument("--stop-after-round", type=int, help=argparse.SUPPRESS)

    workload = parser.add_argument_group("workload")
    workload.add_argument(
        "--factory", metavar="MOD:ATTR", help="your workload factory instead of the demo"
    )
    workload.add_argument("--config-json", metavar="JSON", help="config passed to --factory")
    workload.add_argument(
        "--batches", metavar="FILE|DIR",
        help="batch refs for --factory: a JSON list of refs per peer (or one list dealt round-robin), "
        "or a directory whose files become one ref each",
    )  # fmt: skip
    workload.add_argument(
        "--worker-cmd",
        metavar="CMD",
        help="worker command replacing 'python -m worker' (4 flags are appended)",
    )
    workload.add_argument("--device", help=f"(default {d['device']})")
    workload.add_argument(
        "--state-dict-filter",
        metavar="JSON",
        help='{"include_globs": [...], "exclude_globs": [...]}',
    )
    workload.add_argument(
        "--eval-metric", help=f"the evaluate metric reported as loss (default {d['eval_metric']})"
    )
    workload.add_argument("--microshards-per-step", type=int, help=argparse.SUPPRESS)

    diloco = parser.add_argument_group("diloco")
    diloco.add_argument(
        "--aggregate", choices=("mean", "median"), help=f"(default {d['aggregate']})"
    )
    diloco.add_argument(
        "--codec",
        choices=("fp32", "fp16"),
        help=f"pseudo-gradient transport (default {d['codec']})",
    )
    diloco.add_argument("--outer-lr", type=float, help=f"(default {d['outer_lr']})")
    diloco.add_argument("--outer-momentum", type=float, help=f"(default {d['outer_momentum']})")
    diloco.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        help="Nesterov outer momentum (default on)",
    )
    diloco.add_argument(
        "--diloco-backend", choices=("worker", "command"), help=f"(default {d['diloco_backend']})"
    )
    diloco.add_argument(
        "--command", metavar="'PROGRAM ARGS'",
        help="checkpoint-command backend program; {job_manifest} and {result_manifest} are expanded "
        "(default: python -m worker.job with the run's factory and config)",
    )  # fmt: skip

    windows = parser.add_argument_group("windows")
    windows.add_argument(
        "--merge-policy",
        choices=(
            "WeightedMean",
            "NormClippedWeightedMean",
            "TrimmedMean",
            "Ema",
            "QualityWeightedEma",
        ),
        help=f"(default {d['merge_policy']})",
    )
    windows.add_argument(
        "--reconcile", choices=("replace", "root-ema"), help=f"(default {d['reconcile']})"
    )
    windows.add_argument(
        "--canonical-weight",
        type=float,
        help=f"RootEma canonical_weight (default {d['canonical_weight']})",
    )

    faults = parser.add_argument_group("faults")
    faults.add_argument(
        "--fault", action="append", metavar="KIND@PEER:ROUND",
        help="crash (SIGKILL), hang (SIGSTOP; the call timeout fires) or error; repeatable",
    )  # fmt: skip
    faults.add_argument(
        "--call-timeout", type=float, metavar="S", help=f"per call (default {d['call_timeout']:g})"
    )
    faults.add_argument(
        "--start-timeout",
        type=float,
        metavar="S",
        help=f"worker startup (default {d['start_timeout']:g})",
    )
    return parser


def build_config(args: argparse.Namespace) -> Any:
    """A :class:`~fakecoord.sim.SimConfig` from parsed options; raises ``FakecoordError``."""
    from .sim import SimConfig, SimError, split_command
    from .sim_faults import parse_fault

    v = {
        k: getattr(args, k) if getattr(args, k, None) is not None else d
        for k, d in DEFAULTS.items()
    }
    config = None
    if args.config_json is not None:
        try:
            config = json.loads(args.config_json)
        except ValueError as exc:
            raise SimError(f"--config-json is not valid JSON: {exc}") from None
    state_filter = None
    if args.state_dict_filter is not None:
        try:
            state_filter = json.loads(args.state_dict_filter)
        except ValueError as exc:
            raise SimError(f"--state-dict-filter is not valid JSON: {exc}") from None
        if not isinstance(state_filter, dict):
            raise SimError("--state-dict-filter must be a JSON object")
    reconcile: Any = "Replace"
    if v["reconcile"] == "root-ema":
        reconcile = {"RootEma": {"canonical_weight": v["canonical_weight"]}}
    return SimConfig(
        protocol=v["protocol"],
        peers=v["peers"],
        rounds=v["rounds"],
        inner_steps=v["inner_steps"],
        seed=v["seed"],
        factory=args.factory,
        config=config,
        batches=str(Path(args.batches).resolve()) if args.batches else None,
        worker_cmd=split_command(args.worker_cmd, "--worker-cmd") if args.worker_cmd else None,
        faults=[parse_fault(s) for s in args.fault or []],
        aggregate=v["aggregate"],
        codec=v["codec"],
        outer_lr=v["outer_lr"],
        outer_momentum=v["outer_momentum"],
        nesterov=v["nesterov"],
        diloco_backend=v["diloco_backend"],
        command=split_command(args.command, "--command") if args.command else None,
        baseline=bool(args.baseline or args.baseline_steps),
        baseline_steps=args.baseline_steps or "total",
        merge_policy=v["merge_policy"],
        reconcile=reconcile,
        call_timeout=v["call_timeout"],
        start_timeout=v["start_timeout"],
        device=v["device"],
        microshards_per_step=v["microshards_per_step"],
        state_dict_filter=state_filter,
        eval_metric=v["eval_metric"],
    )


def resume_config(args: argparse.Namespace, out: Path) -> Any:
    """The checkpoint's settings, with ``RESUMABLE`` ones taken from the command line."""
    from .sim import CHECKPOINT_NAME, SimConfig, SimError

    try:
        data = json.loads((out / CHECKPOINT_NAME).read_text(encoding="utf-8"))
        config = SimConfig.from_json(data["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SimError(f"--resume {out}: no readable {CHECKPOINT_NAME} ({exc})") from None
    for name in RESUMABLE:
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    return config


def _run(args: argparse.Namespace) -> int:
    from .sim import CHECKPOINT_NAME, Simulation
    from .sim_report import RichView, RunView, write_plot

    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        print(
            "fakecoord: --resume DIR already names the run directory; drop --out", file=sys.stderr
        )
        return 2
    temporary = False
    try:
        config = resume_config(args, Path(args.resume)) if args.resume else build_config(args)
        config.validate()
    except FakecoordError as exc:
        print(f"fakecoord: {exc}", file=sys.stderr)
        return 2
    if args.resume:
        out = Path(args.resume)
        ignored = [
            "--" + name.replace("_", "-")
            for name, value in vars(args).items()
            if value is not None and name not in (*RESUMABLE, *RUN_ONLY)
        ]
        if ignored:
            print(
                f"fakecoord: the checkpoint's settings are kept; ignoring {', '.join(ignored)}",
                file=sys.stderr,
            )
    else:
        if args.out:
            out = Path(args.out)
        else:
            out = Path(tempfile.mkdtemp(prefix="fakecoord-run-"))
            temporary = True
    view = RunView() if args.quiet else RichView()
    sim = Simulation(
        config, out, view=view, resume=bool(args.resume), stop_after_round=args.stop_after_round
    )
    try:
        report = sim.run()
    except KeyboardInterrupt:
        if not (out / CHECKPOINT_NAME).exists():
            print(
                "\nfakecoord: interrupted before the first checkpoint; all workers stopped",
                file=sys.stderr,
            )
            return 130
        done = sim.state.get("completed_rounds", 0)
        print(
            f"\nfakecoord: interrupted; all workers stopped. {out} holds the run after round {done}: "
            f"resume with --resume {out}",
            file=sys.stderr,
        )
        return 130
    except FakecoordError:
        if temporary:
            print(f"fakecoord: the run directory is kept for inspection: {out}", file=sys.stderr)
        raise
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2), encoding="utf-8")
    rounds = report.get("rounds", [])
    if rounds and not any(r.get("contributors") for r in rounds):
        print(
            f"fakecoord: no peer finished a single round; see the errors in the report and the "
            f"worker logs in {out / 'logs'}",
            file=sys.stderr,
        )
        return 1
    if args.plot:
        write_plot(report, args.plot)
    if temporary and report.get("completed_rounds") == config.rounds:
        shutil.rmtree(out, ignore_errors=True)
    elif not args.quiet:
        print(f"run directory: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fakecoord`` and the ``fakecoord`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        argv = argv[1:]
    elif argv and not argv[0].startswith("-"):
        print(f"fakecoord: unknown command {argv[0]!r}; the only command is 'run'", file=sys.stderr)
        return 2
    args = argument_parser().parse_args(argv)
    try:
        return _run(args)
    except FakecoordError as exc:
        print(f"fakecoord: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
