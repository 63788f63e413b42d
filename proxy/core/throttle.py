"""How often a kind of log line may be written: at most ``per_second`` lines per kind and second, the lines
held back counted in the next one written (its ``suppressed`` field). Lines a peer can cause at will
(backend failures in an outage, clients' malformed requests) go through one, so that no one can flood
the log. Pure: the clock is given."""
from __future__ import annotations

import time
from typing import Callable


class LogThrottle:
    def __init__(self, per_second: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self.clock = clock
        self.windows: dict[str, tuple[float, int, int]] = {}  # kind -> (window start, written, held back)

    def admit(self, kind: str) -> int | None:
        """None: hold this line back; else write it, with this many held back since the last one."""
        now = self.clock()
        start, written, held = self.windows.get(kind, (now, 0, 0))
        if now - start >= 1.0:
            start, written = now, 0
        if written >= self.per_second:
            self.windows[kind] = (start, written, held + 1)
            return None
        self.windows[kind] = (start, written + 1, 0)
        return held
