"""``cache-proxy serve --workers N``: N proxy processes on one port, one small supervisor.

Each worker is a whole proxy (its own event loop, store client, upstream pool and fill coalescing) bound
to the same address with ``SO_REUSEPORT``, so the kernel spreads connections across them. Workers share
nothing in memory, only the store: that is why N > 1 needs Redis (the memory store lives inside one
process: a purge in one worker would not reach the entries of another). Every guarantee then holds
across workers exactly as across hosts.

The supervisor (this process) forks the workers and then only waits:

* metrics: ``PROMETHEUS_MULTIPROC_DIR`` is set to a fresh temporary directory before the workers start
  (prometheus-client's multiprocess mode), so ``/metrics`` on any worker shows the sum over all of
  them; the directory is removed at exit;
* signals: SIGTERM and SIGINT are passed to every worker, which drain as a single process does; the
  supervisor exits 0 once all of them exited 0. SIGHUP is passed on too (rules reload);
* a worker that dies (a crash, an OOM kill) is started again, unless it exited with an error before it
  was listening (a start-up failure such as a port in use): then all workers are stopped and the exit
  code is 1. A worker killed by a signal before it was listening is started again after one second;
* the staleness auditor's budget (``audit.max_per_second``) is per instance: each worker gets 1/N of it;
* pending-purges files: each worker keeps its own (``<file>.w<i>``); files left by a previous run with
  another worker count are handed to worker 0, so an unapplied purge still bumps the global epoch.
"""
from __future__ import annotations

import asyncio
import glob
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import replace

log = logging.getLogger("proxy")

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def parse_workers(value: str | None) -> int:
    """``--workers`` / ``WORKERS``: a positive integer or ``auto`` (one per CPU); ValueError otherwise."""
    if value is None or value == "":
        return 1
    if str(value).strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--workers must be a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise ValueError(f"--workers must be a positive integer or 'auto', got {value!r}")
    return n


def worker_pending_file(base: str | None, index: int, workers: int) -> str | None:
    return base if not base or workers == 1 else f"{base}.w{index}"


def adopt_pending_files(base: str | None, workers: int) -> None:
    """Rename pending-purges files nobody would look at (another worker count last time) to one this
    run's first worker (or single process) reads at start-up. Two such files make one epoch bump."""
    if not base:
        return
    own = re.compile(re.escape(base) + r"(?:\.w(\d+))?")
    target = worker_pending_file(base, 0, workers)
    for path in sorted(glob.glob(glob.escape(base) + "*")):
        m = own.fullmatch(path)
        if m is None or path == target:
            continue
        index = m.group(1)
        if workers > 1 and index is not None and int(index) < workers:
            continue  # worker <index> of this run finds it itself
        try:
            os.replace(path, target)
        except OSError as exc:
            log.error("cannot adopt a pending-purges file", extra={"event": "pending_file_error", "path": path,
                                                                   "error": str(exc)})


def unbindable(*listens: str | None) -> str | None:
    """Why one of the ``HOST:PORT`` addresses cannot be listened on (a port in use), else None.

    Bound as the workers bind (``SO_REUSEPORT``), so another cache-proxy sharing the port (a rolling
    upgrade) is no obstacle; checked before forking, so a port in use is one error line, not one per worker."""
    for listen in filter(None, listens):
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, kind, proto, _, address = infos[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind(address)
        except (OSError, ValueError) as exc:
            return f"cannot listen on {listen}: {getattr(exc, 'strerror', None) or exc}"
    return None


def supervise(workers: int, config, rules, serve) -> int:
    """Fork ``workers`` processes running ``serve(config, rules, started, stop)``; wait; return the exit code."""
    problem = unbindable(config.listen, config.admin_listen)
    if problem is not None:
        log.error("cannot start", extra={"event": "start_failed", "error": problem})
        return 1
    metrics_dir = tempfile.mkdtemp(prefix="katiba-cache-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from prometheus_client import multiprocess

    adopt_pending_files(config.pending_file, workers)
    children: dict[int, tuple[int, int]] = {}  # pid -> (worker index, read end of its "listening" pipe)
    state = {"stopping": False, "failed": False}

    def forward(signum, _frame) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            state["stopping"] = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def spawn(index: int) -> None:
        worker_config = replace(config, pending_file=worker_pending_file(config.pending_file, index, workers),
                                audit_share=1 / workers)  # audit.max_per_second is per instance
        ready_r, ready_w = os.pipe()  # the worker writes one byte once it listens
        os.set_blocking(ready_r, False)
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(ready_r)
                for _, other in children.values():
                    os.close(other)
                code = _worker(index, worker_config, rules, serve, ready_w)
            except BaseException:  # noqa: BLE001 - a child must never return into the supervisor's code
                log.exception("worker failed", extra={"event": "worker_failed", "worker": index})
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(ready_w)
        children[pid] = (index, ready_r)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    log.info("starting workers", extra={"event": "workers", "workers": workers, "listen": config.listen,
                                       "metrics_dir": metrics_dir})
    try:
        for index in range(workers):
            spawn(index)
        while children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid not in children:
                continue
            index, ready_r = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            multiprocess.mark_process_dead(pid, metrics_dir)
            try:
                was_ready = os.read(ready_r, 1) == b"1"
            except BlockingIOError:
                was_ready = False
            os.close(ready_r)
            if state["stopping"]:
                state["failed"] |= code != 0
                continue
            if was_ready or code < 0:  # a start-up failure was logged by the worker itself
                log.error("worker exited", extra={"event": "worker_exited", "worker": index, "code": code})
            if not was_ready and code < 0:  # killed during its start-up: not its own failure, but no hot loop
                time.sleep(1.0)
                if state["stopping"]:
                    continue
            elif not was_ready:
                log.error("a worker failed at start-up; stopping every worker", extra={"event": "workers_failed"})
                state["failed"] = True
                forward(signal.SIGTERM, None)
                continue
            spawn(index)
    finally:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("workers stopped", extra={"event": "stopped", "workers": workers})
    return 1 if state["failed"] else 0


def _worker(index: int, config, rules, serve, ready_fd: int) -> int:
    """In the forked child: default signal handling until the event loop takes over, then serve; one
    byte on ``ready_fd`` once listening."""
    early = {"stop": False}

    def remember(_signum, _frame) -> None:
        early["stop"] = True  # a SIGTERM before the loop's own handlers are installed

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, remember)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported before the directory was set: switch to per-process files
        values.ValueClass = values.get_value_class()
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def main() -> None:
        started, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.get_running_loop().create_task(serve(config, rules, started, stop))
        waiter = asyncio.get_running_loop().create_task(started.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if started.is_set():
            os.write(ready_fd, b"1")
        os.close(ready_fd)
        if early["stop"]:
            stop.set()
        await task

    try:
        asyncio.run(main())
    except (ValueError, OSError) as exc:
        log.error("cannot start", extra={"event": "start_failed", "error": str(exc), "worker": index})
        return 1
    return 0
