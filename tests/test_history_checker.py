"""The checker of concurrent metadata histories (tests/metadata_history.py) on histories made by
hand: what it must accept (operations overlapping a listing either way) and what it must flag."""

from __future__ import annotations

import math

from metadata_history import Operation, check


def op(client: int, kind: str, args: tuple[str, ...], invoked: float, completed: float = math.inf,
       listing: tuple[str, ...] = (), error: str = "") -> Operation:
    return Operation(client, kind, args, invoked, completed, error, frozenset(listing))


def test_overlapping_operations_may_show_either_way():
    history = [
        op(1, "mkdir", ("a",), 0, 1),
        op(1, "mkdir", ("b",), 2, 4),        # under way during client 2's listing: either is right
        op(1, "rename", ("a", "c"), 3, 5),   # the same
        op(2, "listdir", (), 3.5, 3.8, listing=("a", "b")),
        op(2, "listdir", (), 3.6, 3.9, listing=("c",)),  # rename done, mkdir not: still linearizable
        op(2, "listdir", (), 6, 7, listing=("b", "c")),
    ]
    assert check(history, ["b", "c"]) == []


def test_a_lost_acknowledgement_shows():
    history = [op(1, "mkdir", ("a",), 0, 1), op(2, "listdir", (), 2, 3, listing=())]
    assert any("misses a" in v for v in check(history))
    assert any("final listing: misses a" in v for v in check(history[:1], []))


def test_a_change_nobody_made_or_already_undone_shows():
    history = [op(1, "mkdir", ("a",), 0, 1), op(1, "rmdir", ("a",), 2, 3),
               op(2, "listdir", (), 4, 5, listing=("a", "ghost"))]
    violations = check(history)
    assert any("shows a" in v for v in violations) and any("shows ghost" in v for v in violations)


def test_a_write_not_yet_invoked_must_not_show():
    history = [op(2, "listdir", (), 0, 1, listing=("a",)), op(1, "mkdir", ("a",), 2, 3)]
    assert any("shows a" in v for v in check(history))


def test_a_rename_is_atomic():
    history = [op(1, "mkdir", ("a",), 0, 1), op(1, "rename", ("a", "b"), 2, 5),
               op(2, "listdir", (), 3, 4, listing=("a", "b")), op(2, "listdir", (), 3, 4, listing=())]
    violations = check(history)
    assert any("both a and b" in v for v in violations) and any("neither a nor b" in v for v in violations)


def test_a_failed_operation_is_flagged_and_either_outcome_accepted():
    history = [op(1, "mkdir", ("a",), 0, error="OSError(5, 'EIO')")]
    assert check(history, ["a"]) == check(history, []) == ["client 1 mkdir('a',) invoked at 0.00: OSError(5, 'EIO')"]
