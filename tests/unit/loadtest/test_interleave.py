"""The interleaved sweep's memory rule: a next stack starts only where the first one's memory is still free."""

from __future__ import annotations

from smartspec.loadtest.interleave import GIB, MEMORY_MARGIN, mem_available, memory_shortfall


def test_the_first_stack_always_starts_and_sets_the_measure() -> None:
    assert memory_shortfall(0, 1 * GIB, started=0, total=4) is None  # nothing measured yet
    assert memory_shortfall(5 * GIB, None, started=1, total=4) is None  # no /proc/meminfo: cannot say


def test_a_next_stack_needs_the_first_ones_memory_and_a_margin() -> None:
    assert memory_shortfall(5 * GIB, 5 * GIB + MEMORY_MARGIN, started=1, total=3) is None
    why = memory_shortfall(5 * GIB, 5 * GIB + MEMORY_MARGIN - 1, started=2, total=4)
    assert why is not None
    assert "4 stacks need about 20.0 GiB" in why and "with 2 up only 7.0 GiB" in why
    assert "--resume" in why  # says how to go on: fewer policies per run, the same folder


def test_this_machine_reports_available_memory_less_the_mapped_pages() -> None:
    avail = mem_available()
    assert avail is not None and 0 < avail < 2**50
