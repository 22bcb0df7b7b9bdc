"""Defects of the process a hook runs in: threads, exits and hangs.

In the worker they must become FAILs of the check that met them; none of
them may hang the suite or end it without a summary (the suite never runs
workload code in its own process).  Every thread and sleep is bounded here
(60 s) so a broken test cannot leave processes behind for long.
"""

from __future__ import annotations

import os
import threading
import time


class LingeringThread:
    """The factory starts a non-daemon thread, which keeps the process alive
    after the coordinator has gone."""

    def __init__(self, config: dict | None) -> None:
        super().__init__(config)
        stop = threading.Event()
        threading.Thread(target=stop.wait, args=(60.0,), daemon=False).start()


class HookThread:
    """init_model starts a non-daemon thread (a data loader would), so the worker
    outlives its acknowledged shutdown."""

    started = False

    def init_model(self, device: str) -> dict:
        if not type(self).started:
            type(self).started = True
            stop = threading.Event()
            threading.Thread(target=stop.wait, args=(60.0,), daemon=False).start()
        return super().init_model(device)


class InitExits:
    """init_model ends the process with os._exit(0) (in the suite's own process this
    once ended the run with status 0 and no summary)."""

    def init_model(self, device: str) -> dict:
        os._exit(0)


class InitSleeps:
    """init_model blocks (for 60 s): every call must be bounded by --timeout."""

    def init_model(self, device: str) -> dict:
        time.sleep(60.0)
        return super().init_model(device)


class ImportMarker:
    """Correct, but records which processes built it (``config["marker"]``): the
    suite's own process must never be one of them."""

    def __init__(self, config: dict | None) -> None:
        super().__init__(config)
        marker = (config or {}).get("marker")
        if marker:
            with open(marker, "a", encoding="utf-8") as out:
                out.write(f"{os.getpid()}\n")
