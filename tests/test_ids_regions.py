"""Job ids name their region (issue 22): ``job_<core>[.<k>].<n>~<region>``, and ids without
the suffix, every id minted before regions, stay valid and belong to the reader's region."""

from __future__ import annotations

import pytest

from dispatcher.ids import (
    event_id_of,
    is_job_id,
    is_region_name,
    new_event_ids,
    region_of,
    shard_job_prefix,
    shard_of,
    with_region,
)

CORE = "0123456789abcdefghjk"


@pytest.mark.parametrize(
    ("job_id", "shard", "region"),
    [
        (f"job_{CORE}.1", 0, None),
        (f"job_{CORE}.7.12", 7, None),
        (f"job_{CORE}.1~eu", 0, "eu"),
        (f"job_{CORE}.3.2~us_east_1", 3, "us_east_1"),
    ],
)
def test_a_job_id_says_its_shard_region_and_event(job_id: str, shard: int, region: str) -> None:
    """The suffix names the region and changes neither the shard nor the event an id names."""
    assert is_job_id(job_id)
    assert shard_of(job_id) == shard
    assert region_of(job_id) == region
    assert event_id_of(job_id) == f"evt_{CORE}"


@pytest.mark.parametrize(
    "bad",
    [
        f"job_{CORE}.1~",  # an empty region
        f"job_{CORE}.1~EU",  # upper case
        f"job_{CORE}.1~1eu",  # not starting with a letter
        f"job_{CORE}.1~eu-west",  # a dash
        f"job_{CORE}.1~a~b",  # two suffixes
        f"job_{CORE}.1~" + "a" * 17,  # too long
        f"job_{CORE}~eu.1",  # in the wrong place
    ],
)
def test_malformed_region_suffixes_are_not_job_ids(bad: str) -> None:
    """An id whose suffix is not a region name is refused as a whole (a 404, never a lookup)."""
    assert not is_job_id(bad)


def test_with_region_sets_or_removes_the_suffix() -> None:
    """``with_region`` names a region whatever the id named before; None takes it off."""
    _, prefix = new_event_ids()
    local = shard_job_prefix(prefix, 2) + "1"
    assert with_region(local, "b") == local + "~b"
    assert with_region(local + "~a", "b") == local + "~b"
    assert with_region(local + "~a", None) == local
    assert region_of(with_region(local, "c")) == "c"


def test_region_names() -> None:
    """Region names are safe in ids, key names, URLs and env names."""
    assert all(map(is_region_name, ["a", "eu", "us_east_1", "a" * 16]))
    assert not any(map(is_region_name, ["", "EU", "1a", "eu-west", "a" * 17, "e u", None, 3]))
