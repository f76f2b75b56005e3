"""A fleet's instances agree, without a word, on which of them looks at a file first; the others
leave it for a while, then any may take it (the claim row still lets only one win)."""

from __future__ import annotations

import collections
from pathlib import Path, PurePosixPath

from ingestd.inbox.owners import BACKSTOP_SECONDS, Owners
from ingestd.inbox.settle import Settler
from tests.inbox.test_watch import Clock
from tests.samples import pdf

FLEET = ("host-a:1", "host-b:1", "host-c:1")
PATHS = [PurePosixPath(f"p_{n % 40}/scan-{n}.pdf") for n in range(600)]


def test_every_instance_names_the_same_single_owner_and_the_work_is_shared() -> None:
    views = [Owners(me, FLEET) for me in FLEET]
    owners = collections.Counter()
    for rel in PATHS:
        named = {view.owner(rel) for view in views}
        assert len(named) == 1
        owners[named.pop()] += 1
        takers = [view.me for view in views if view.wait(rel, age=0.0) == 0.0]
        assert len(takers) == 1  # only the owner looks at once
    assert set(owners) == set(FLEET)
    assert min(owners.values()) > len(PATHS) / len(FLEET) * 0.8  # about a third each


def test_others_wait_only_until_the_backstop() -> None:
    rel = PATHS[0]
    other = next(Owners(me, FLEET) for me in FLEET if Owners(me, FLEET).owner(rel) != me)
    assert 0.0 < other.wait(rel, age=0.0) <= 5.0  # looked at again soon: the fleet may change
    assert other.wait(rel, age=BACKSTOP_SECONDS - 1) == 1.0
    assert other.wait(rel, age=BACKSTOP_SECONDS) == 0.0  # a stuck owner: anyone may
    # A long settle time is the owner's, on top of the backstop.
    assert other.wait(rel, age=BACKSTOP_SECONDS, settle=60.0) > 0.0
    assert other.wait(rel, age=BACKSTOP_SECONDS + 60.0, settle=60.0) == 0.0


def test_alone_or_when_the_fleet_is_unknown_every_file_is_mine() -> None:
    assert all(Owners("host-a:1").wait(rel, 0.0) == 0.0 for rel in PATHS)
    assert all(Owners("host-a:1", ("host-a:1",)).wait(rel, 0.0) == 0.0 for rel in PATHS)


def test_a_dead_owner_leaves_its_files_to_the_survivors() -> None:
    rel = next(r for r in PATHS if Owners("host-a:1", FLEET).owner(r) == "host-c:1")
    survivors = ("host-a:1", "host-b:1")
    assert Owners("host-a:1", survivors).owner(rel) in survivors


def test_a_postponed_file_is_not_due_until_its_time(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(tmp_path, settle_for=lambda rel: 0.0, clock=clock)
    (tmp_path / "a.pdf").write_bytes(pdf("a"))
    rel = PurePosixPath("a.pdf")
    settler.notice(rel)
    assert list(settler.due_paths()) == [rel]
    settler.postpone(rel, 5.0)
    assert list(settler.due_paths()) == []
    clock.now += 5.0
    assert list(settler.due_paths()) == [rel]
    assert settler.age(rel) >= 0.0
    assert settler.age(PurePosixPath("never-seen.pdf")) == 0.0
