"""The local fleet collects cyclic garbage at its own pace (components/local/fleet.py `_SweepCollections`): while it
runs no collection can land in the controller's step, yet nothing cyclic outlives a sweep, and the process gets
CPython's automatic collection back when the fleet stops."""

from __future__ import annotations

import gc
import weakref

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
