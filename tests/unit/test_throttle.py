"""core/throttle.py: at most ``per_second`` lines per kind and second; the next line written counts those
held back, and a new second starts a new window."""
from __future__ import annotations

from proxy.core.throttle import LogThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_a_second_per_kind_the_next_counting_those_held_back():
    clock = Clock()
    throttle = LogThrottle(per_second=1, clock=clock)
    assert [throttle.admit("a") for _ in range(4)] == [0, None, None, None]
    assert throttle.admit("b") == 0  # another kind has its own window
    clock.now += 0.99
    assert throttle.admit("a") is None
    clock.now += 0.01
    assert throttle.admit("a") == 4
    assert throttle.admit("a") is None


def test_a_higher_rate_writes_that_many_lines_a_second():
    clock = Clock()
    throttle = LogThrottle(per_second=3, clock=clock)
    assert [throttle.admit("a") for _ in range(5)] == [0, 0, 0, None, None]
    clock.now += 1.0
    assert throttle.admit("a") == 2
