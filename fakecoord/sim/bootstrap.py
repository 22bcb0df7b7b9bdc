"""The factory every simulated worker loads first: ``fakecoord.sim.bootstrap:make_workload``.

The simulation starts each worker (and each command-backend job) with this
factory and a config ``{"fakecoord_bootstrap": 1, "factory": "MOD:ATTR",
"config": <your config>, "threads": N or null, "seed": S}``.  Inside the
worker process, before your module is imported, it

1. caps torch's intra-op threads at ``threads`` (the simulation also sets
   ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` in the
   worker's environment, which covers libraries that read them at load);
2. seeds ``random``, numpy (when installed) and torch with ``seed``;

then imports ``MOD``, calls ``ATTR(config)`` and returns the workload object
unchanged (its hooks, ``workload_name`` and capabilities are yours).  So any
workload run by ``python -m fakecoord run`` is reproducible from ``--seed``
and never oversubscribes the cores, whatever worker command runs it.

Runs inside the worker: imports only the standard library, torch and (if
present) numpy, never ``worker``.  Errors name your factory.
"""

from __future__ import annotations

import importlib
import random
from typing import Any

MARKER = "fakecoord_bootstrap"
FACTORY = "fakecoord.sim.bootstrap:make_workload"


class FactoryError(RuntimeError):
    """Your factory could not be imported or found (the message names it)."""


def wrap(factory: str, config: Any, threads: int | None, seed: int) -> dict:
    """The bootstrap config that makes the worker load ``factory(config)``."""
    return {MARKER: 1, "factory": factory, "config": config, "threads": threads, "seed": seed}


def prepare_process(threads: int | None, seed: int) -> None:
    """Cap torch's threads and seed every generator this process has (see the module docstring)."""
    import torch

    if threads is not None:
        # Intra-op threads only: setting the inter-op pool here would make a workload's own
        # later torch.set_num_interop_threads() raise.
        torch.set_num_threads(threads)
    random.seed(seed)
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is optional inside workers
        pass
    else:
        numpy.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_factory(spec: str) -> Any:
    """Import ``MODULE:ATTR``; raises :class:`FactoryError` naming what is missing."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise FactoryError(
            f"--factory {spec!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise FactoryError(f"--factory {spec!r}: module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise FactoryError(f"--factory {spec!r}: {attr!r} is not callable")
    return target


def make_workload(config: dict) -> Any:
    """The wrapper factory: prepare the process, then return ``factory(config)`` unchanged."""
    if not isinstance(config, dict) or config.get(MARKER) != 1:
        raise FactoryError(f"{FACTORY} is the simulation's wrapper; pass it a config from wrap()")
    prepare_process(config.get("threads"), int(config.get("seed", 0)))
    factory = load_factory(config["factory"])
    return factory(config.get("config"))


PROBE_PREFIX = "fakecoord probe: "
"""How the factory probe's one-line verdict starts on its stderr (the rest is detail)."""


def probe(config_json: str) -> int:
    """``python -c``'s body for the simulation's factory probe (:func:`.config.check_factory`):
    build the workload once, as a worker would, and say what is wrong on stderr.

    Returns 0 when the factory gave an object, 2 otherwise (a line starting with
    :data:`PROBE_PREFIX`, then, when the factory itself raised, its traceback).
    """
    import json
    import sys
    import traceback

    config = json.loads(config_json)
    spec = config["factory"]
    try:
        workload = make_workload(config)
    except FactoryError as exc:
        print(PROBE_PREFIX + str(exc), file=sys.stderr)
        return 2
    except BaseException as exc:  # the factory's own failure, SystemExit included
        first = f"{type(exc).__name__}: {exc}".splitlines()[0]
        print(f"{PROBE_PREFIX}--factory {spec!r}: the factory raised {first}", file=sys.stderr)
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next  # the user's frames only
        # The frames only: the first line already says the exception's type and message.
        frames = "".join(traceback.format_tb(tb))
        print(f"Traceback (most recent call last):\n{frames}", end="", file=sys.stderr)
        return 2
    if workload is None:
        print(
            f"{PROBE_PREFIX}--factory {spec!r} returned None; it must return the workload object",
            file=sys.stderr,
        )
        return 2
    return 0


__all__ = [
    "FACTORY",
    "FactoryError",
    "MARKER",
    "PROBE_PREFIX",
    "make_workload",
    "prepare_process",
    "probe",
    "wrap",
]
