"""The memory allocator ``cache-proxy serve`` runs under (``HUGE_PAGES``).

Why: with many keys, what one hit reads (its framed head, the lookup memoised on it, the entry, its
rendered head and body) lies scattered over a heap of hundreds of MiB, and on our machines a read that
misses the CPU's caches costs about 300 ns. At 100k keys the proxy spent more of a hit waiting on memory
than computing (BENCHMARKS.md, (f)). Python's own allocator files each object by its size class, so
objects made together land on as many pages as they have sizes; glibc's malloc places them in the order
they are made, side by side, and with the tunable ``glibc.malloc.hugetlb=1`` it asks the kernel for
transparent huge pages, so that one TLB entry covers 2 MiB instead of 4 KiB.

How: both are read when the interpreter starts, so ``serve`` re-executes itself once at start (same pid,
arguments and working directory) with ``PYTHONMALLOC=malloc`` and the tunable added to
``GLIBC_TUNABLES``. Nothing is changed when the operator chose ``PYTHONMALLOC`` already, off glibc 2.35
or newer (musl's malloc is slower than Python's and has no such tunable), or with ``HUGE_PAGES=0``.
This module imports only the standard library and core.settings.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Mapping

from ..core.settings import setting, setting_bool

TUNABLE = "glibc.malloc.hugetlb=1"
MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def allocator_environment(environ: Mapping[str, str], libc: tuple[str, str]) -> dict[str, str] | None:
    """The environment to run ``serve`` under, or None to run on in this one. ``libc``: what
    ``platform.libc_ver()`` gives, e.g. ("glibc", "2.36")."""
    if not setting_bool(environ, "HUGE_PAGES") or setting(environ, "PYTHONMALLOC"):
        return None
    name, version = libc
    try:
        if name != "glibc" or tuple(int(part) for part in version.split(".")[:2]) < MIN_GLIBC:
            return None
    except ValueError:
        return None
    tunables = setting(environ, "GLIBC_TUNABLES")
    return {**environ, "PYTHONMALLOC": "malloc",
            "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def run_under_chosen_allocator() -> None:
    """Re-execute this process under ``allocator_environment`` when it differs from the running one.
    Returns only when there is nothing to change or the exec failed (this process then serves as it is)."""
    environment = allocator_environment(os.environ, platform.libc_ver())
    if environment is None or not sys.executable:
        return
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
    except OSError:
        return


def describe(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """For the ``listening`` log line: the allocator in use and what the kernel does with huge pages."""
    try:
        mode = THP_MODE.read_text().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        mode = "unavailable"
    huge = TUNABLE in setting(environ, "GLIBC_TUNABLES").split(":")
    return {"allocator": setting(environ, "PYTHONMALLOC") or "pymalloc",
            "huge_pages": mode if huge else "off"}
