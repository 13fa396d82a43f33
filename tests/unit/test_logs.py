"""smartspec.logs: a message that repeats at the rate of a fault is cut to a burst per window, and counted."""

from __future__ import annotations

import logging

import pytest

from smartspec.logs import RepeatLimiter


def test_repeats_past_the_burst_are_left_out_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = RepeatLimiter(burst=3, window_s=60.0, clock=lambda: now[0])
    log = logging.getLogger("smartspec.test.flood")
    caplog.handler.addFilter(limiter)
    try:
        with caplog.at_level(logging.WARNING):
            for i in range(1000):  # e.g. accept() failing once per connection attempt
                log.warning("cannot accept a connection: %s (%d)", "too many open files", i)
            log.warning("a different message")  # its own allowance
            assert [r.getMessage() for r in caplog.records] == [
                f"cannot accept a connection: too many open files ({i})" for i in range(3)] + ["a different message"]
            assert limiter.dropped == 997
            now[0] = 61.0  # the next window: it passes again, saying how many were left out
            log.warning("cannot accept a connection: %s (%d)", "too many open files", 1000)
            assert caplog.records[-1].getMessage() == ("cannot accept a connection: too many open files (1000) "
                                                      "[997 more like this in the last 60s left out]")
    finally:
        caplog.handler.removeFilter(limiter)
