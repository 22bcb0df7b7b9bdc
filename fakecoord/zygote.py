"""The fork server's own process (``python -m fakecoord.zygote``): a worker-side process.

Started by :class:`fakecoord.forkserver.ForkServer` with a clean interpreter,
it imports torch (and the ``--preload`` modules), pays torch's one-time
first-use costs once (``--warmup``: a tiny ``torch.optim`` step, which
imports ``torch._dynamo``: seconds of CPU), then forks one child per request.
Each child becomes exactly what ``python -m worker ARGS`` would be: it runs
the ``worker`` package as ``__main__`` (``runpy``) with the requested argv,
environment, working directory and stderr, and exits with its status.  The
coordinator never imports this module's children's code: this process is on
the worker's side of the wire, like the worker itself.

Fork safety (see docs/simulation.md, "How workers start"):

- the server never starts a thread: its loop is one ``poll`` over the
  control socket and the children's pidfds;
- torch's intra-op pool (OpenMP) is capped at one thread before any torch op
  runs, and the server's environment caps OpenMP, MKL and OpenBLAS at one
  thread (OpenBLAS starts its pool when numpy loads, before any op);
- right before every fork the server checks that ``threading.active_count()``
  is 1 and that ``/proc/self/task`` holds exactly one thread, and refuses the
  fork otherwise (the coordinator then spawns a fresh interpreter);
- the child drops every descriptor but its stdin/stdout (``/dev/null``) and
  stderr (its log), restores the signal handlers and mask a fresh
  interpreter has, reseeds ``random``, numpy and torch from the OS as a
  fresh interpreter does, and sets torch's threads from its own environment.

Control protocol (``SOCK_SEQPACKET``, one JSON object per packet):

- server -> coordinator ``{"op": "ready", "pid", "threads", "seconds"}`` once;
- coordinator -> server ``{"op": "fork", "id", "argv", "env", "cwd"}`` with
  the child's stderr descriptor attached (``SCM_RIGHTS``);
- server -> coordinator ``{"op": "forked", "id", "pid"}`` with the child's
  pidfd attached, or ``{"op": "refused", "id", "reason"}``;
- server -> coordinator ``{"op": "exit", "pid", "returncode"}`` (Popen's
  convention: ``-N`` for signal N) when a child ends.

At EOF on the control socket (the coordinator closed it or died) the server
SIGKILLs and reaps its remaining children and exits: it never outlives the
coordinator, and neither do children it still tracks.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

MAX_PACKET = 1 << 22
MAX_FDS = 4
TASK_DIR = "/proc/self/task"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Capped at 1 in the server's own environment (the coordinator sets them)."""
WORKER_MODULE = "worker"


def os_threads() -> int:
    """The number of OS threads of this process (Linux: ``/proc/self/task``)."""
    return len(os.listdir(TASK_DIR))


def fork_refusal() -> str | None:
    """Why forking now would be unsafe (more than one thread), or None."""
    python_threads = threading.active_count()
    threads = os_threads()
    if python_threads != 1 or threads != 1:
        return (
            f"the fork server has {threads} OS threads ({python_threads} Python threads); "
            "forking a process with threads can deadlock its children"
        )
    return None


class Server:
    """The server loop (see the module docstring)."""

    def __init__(self, control: socket.socket, base_path: list[str]) -> None:
        self.control = control
        self.base_path = base_path
        self.children: dict[int, int] = {}
        """pidfd -> pid of every child not yet reaped."""
        self.handlers = {
            sig: signal.getsignal(sig)
            for sig in signal.valid_signals()
            if sig not in (signal.SIGKILL, signal.SIGSTOP)
        }
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.poller = select.poll()  # no FD_SETSIZE limit: any number of children

    def send(self, message: dict, fds: Sequence[int] = ()) -> None:
        data = json.dumps(message).encode()
        if fds:
            socket.send_fds(self.control, [data], list(fds))
        else:
            self.control.send(data)

    def serve(self) -> None:
        """Serve until EOF on the control socket or the coordinator is gone, then
        :meth:`shutdown`."""
        control = self.control.fileno()
        self.poller.register(control, select.POLLIN)
        try:
            while True:
                for fd, _ in self.poller.poll():
                    if fd != control:
                        self.reap(fd)
                        continue
                    try:
                        data, fds, _, _ = socket.recv_fds(self.control, MAX_PACKET, MAX_FDS)
                    except OSError:
                        data, fds = b"", []
                    if not data:
                        return
                    self.handle(json.loads(data), fds)
        except OSError:  # the coordinator is gone (EPIPE on a reply)
            return
        finally:
            self.shutdown()

    def reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self.send({"op": "exit", "pid": pid, "returncode": os.waitstatus_to_exitcode(status)})

    def shutdown(self) -> None:
        for pidfd, pid in list(self.children.items()):
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            os.waitpid(pid, 0)
            os.close(pidfd)
        self.children.clear()

    def handle(self, request: dict, fds: list[int]) -> None:
        try:
            if request.get("op") != "fork" or len(fds) != 1:
                self.send({"op": "refused", "id": request.get("id"), "reason": "bad request"})
                return
            why = fork_refusal()
            if why is not None:
                self.send({"op": "refused", "id": request["id"], "reason": why})
                return
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                self.child(request, fds[0])  # never returns
            pidfd = os.pidfd_open(pid)
            self.children[pidfd] = pid
            self.poller.register(pidfd, select.POLLIN)
            self.send({"op": "forked", "id": request["id"], "pid": pid}, [pidfd])
        finally:
            for fd in fds:
                os.close(fd)

    # -- in the child --------------------------------------------------------------

    def child(self, request: dict, stderr_fd: int) -> None:
        """Become ``python -m worker ARGV``; exits the process, never returns."""
        code = 1
        try:
            os.dup2(stderr_fd, 2)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            self.control.detach()
            for name in os.listdir("/proc/self/fd"):
                if int(name) > 2:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            signal.set_wakeup_fd(-1)
            for sig, handler in self.handlers.items():
                try:
                    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
            env = request["env"]
            os.environ.clear()
            os.environ.update(env)
            cwd = request.get("cwd")
            if cwd:
                os.chdir(cwd)
            entries = [e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e]
            sys.path[:] = [os.getcwd(), *(os.path.abspath(e) for e in entries), *self.base_path]
            importlib.invalidate_caches()
            reseed(env)
            sys.argv = ["-m", *request["argv"]]
            code = run_worker()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)


def reseed(env: dict) -> None:
    """What a fresh interpreter has: generators seeded from the OS, torch's threads from ``env``."""
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()
        threads = None
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            try:
                threads = int(env.get(name, ""))
                break
            except ValueError:
                continue
        torch.set_num_threads(threads if threads and threads > 0 else (os.cpu_count() or 1))


def run_worker() -> int:
    """Run the worker package as ``__main__``; the exit status a fresh interpreter would have."""
    import atexit
    import runpy

    code: Any = 0
    try:
        runpy.run_module(WORKER_MODULE, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code & 0xFF


def warm_up() -> None:
    """Pay torch's first-use costs once: a tiny forward, backward and ``torch.optim`` step."""
    import torch

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fakecoord.zygote")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--preload", action="append", default=[])
    parser.add_argument("--warmup", action="store_true")
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    # The base of every child's sys.path: ours without our cwd and PYTHONPATH entries.
    ours = {os.path.abspath(e) for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e}
    base = [p for p in sys.path[1:] if p not in ours]
    server = Server(control, base)
    # The coordinator stops us by closing the control socket; Ctrl-C is its to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = time.monotonic()
    import torch

    torch.set_num_threads(1)  # before any op: the OpenMP pool never grows past this thread
    for name in args.preload:
        importlib.import_module(name)
    if args.warmup:
        warm_up()
    gc.collect()
    gc.freeze()  # children's collections then leave the preloaded objects' pages shared
    server.send(
        {
            "op": "ready",
            "pid": os.getpid(),
            "threads": os_threads(),
            "seconds": round(time.monotonic() - started, 3),
        }
    )
    server.serve()
    # Nothing to finalize: skipping the interpreter's teardown (torch's is slow) lets the
    # coordinator's close return at once.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
