"""The one record of children: a child's kind picks its table, and changes only there."""

from __future__ import annotations

import logging

from unicornish.master.children import MOLD, SPARE, WORKER, Children, Stopper, WorkerProc
from unicornish.scoreboard import Scoreboard

LOG = logging.getLogger("test-children")


def spare(pid: int) -> WorkerProc:
    return WorkerProc(-1, pid, 0, Scoreboard(), 0.0, 0.0, kind=SPARE)


def test_a_spare_takes_a_slot_then_becomes_the_mold_in_one_record():
    children = Children()
    w = spare(101)
    children.add(w)
    assert w.label == "spare" and children.spare_count() == 1 and children.served() == []
    children.change_kind(w, WORKER, 3)
    assert w.label == "worker[3]" and children.workers.slots(0).by_nr[3] is w
    assert children.spare_count() == 0 and children.live_workers() == [w]
    children.change_kind(w, MOLD)
    assert w.label == "mold" and children.served() == [w] and children.live_workers() == []
    assert len(children) == 1 and children.get(101) is w
    assert children.pop(101) is w and len(children) == 0 and len(children.molds) == 0
    assert children.pop(101) is None


def test_the_stopper_reaches_a_child_through_its_kind():
    children = Children()
    w = spare(102)
    children.add(w)
    stopper = Stopper(LOG, children)
    stopper.mark_stopping(w, "EOF")
    stopper.kill_after(w, 5.0)
    assert children.spares.live() == [] and children.spares.deadlines == {102: w}
    assert children.workers.deadlines == {} and stopper.tick(1.0) == 5.0
