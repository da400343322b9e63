"""The local fleet collects cyclic garbage at its own pace (components/local/fleet.py `_SweepCollections`): while it
runs no collection can land in the controller's step, yet nothing cyclic outlives a sweep, and the process gets
CPython's automatic collection back when the fleet stops."""

from __future__ import annotations

import gc
import os
import threading
import weakref

import pytest

from components.local import fleet as fleet_module


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_a_sweep_frees_the_cycles_it_left_and_stopping_restores_automatic_collection() -> None:
    assert gc.isenabled()
    with fleet_module._SweepCollections() as collections:
        assert not gc.isenabled(), "while the fleet runs, only the simulator collects"
        dropped = weakref.ref(Cycle())
        assert dropped() is not None, "a cycle is not freed by reference counting"
        collections.after_sweep()
        assert dropped() is None, "the sweep's young collection freed it"
    assert gc.isenabled()


def test_old_cycles_go_in_the_periodic_full_collection() -> None:
    with fleet_module._SweepCollections() as collections:
        old = Cycle()
        gc.collect(1)  # survives the young generations: now old
        dropped = weakref.ref(old)
        del old
        collections.after_sweep()
        assert dropped() is not None, "a young collection does not look at the old generation"
        collections._full_at = 0.0  # FULL_COLLECTION_SECONDS have passed
        collections.after_sweep()
        assert dropped() is None, "the full collection freed it"


def test_a_process_that_had_collection_off_keeps_it_off() -> None:
    gc.disable()
    try:
        with fleet_module._SweepCollections():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _free_80_mb_in_a_thread() -> list[bytes]:
    """80 MB allocated and freed in a worker thread (its own glibc arena), two blocks kept so the arena cannot
    shrink from its top: returned only by a trim."""
    kept: list[bytes] = []

    def churn() -> None:
        blocks = [bytes(2000) for _ in range(40_000)]
        kept.extend((blocks[20_000], blocks[-1]))

    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    return kept


@pytest.mark.skipif(fleet_module._MALLOC_TRIM is None, reason="glibc's malloc_trim only: elsewhere the heap is the allocator's")
def test_freed_heap_goes_back_to_the_system_when_the_fleet_starts_and_in_each_full_pass() -> None:
    """The attack on the 1 GiB budget: a process that runs one fleet after another, or evaluated a candidate just
    before (`model add`), starts the fleet on that high-water mark, because glibc keeps what a thread freed in that
    thread's arena. Starting the fleet returns it; so does the periodic full pass, not the young pass after every
    sweep."""
    kept = _free_80_mb_in_a_thread()
    before = _rss_mib()
    with fleet_module._SweepCollections() as collections:
        assert before - _rss_mib() > 50, f"starting the fleet returned only {before - _rss_mib():.0f} MiB of the 80 MB freed"
        kept += _free_80_mb_in_a_thread()
        before = _rss_mib()
        collections.after_sweep()
        assert before - _rss_mib() < 20, "the young pass runs after every sweep: it must stay cheap"
        collections._full_at = 0.0
        collections.after_sweep()
        assert before - _rss_mib() > 50, f"the full pass returned only {before - _rss_mib():.0f} MiB of the 80 MB freed"
    assert kept
