"""Config of regions (issue 22): top-level ``region`` and ``[regions]``, from the file and the
environment, the rules relating them, and what check-config shows. Pure: no Redis."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import orjson
import pytest

from dispatcher import cli
from dispatcher.config import SECTIONS, Config, changed_keys, load, redacted, with_keys
from dispatcher.daemon import LIVE_KEYS
from tests.test_config import problems_of, write

if TYPE_CHECKING:
    from pathlib import Path

A, B = "redis://:pa55-a@a.example:6379/0", "rediss://user:pa55-b@b.example:6380/0"
C = "redis+sentinel://:pa55-c@s1.example:26379,s2.example:26379/mymaster"
EU = "redis+cluster://:pa55-eu@n1.example:7000,n2.example:7001"
PASSWORDS = ("pa55-a", "pa55-b", "pa55-c", "pa55-eu")


def test_regions_from_the_file_and_the_environment(tmp_path: Path) -> None:
    """The environment adds regions (name lower-cased) and overrides the file's, and redis.url
    defaults to this region's URL."""
    path = write(tmp_path, f'region = "b"\n[regions]\na = "{A}"\nb = "redis://old:6379/0"\n')
    environ = {
        "DISPATCHER_REGION": "a",
        "DISPATCHER_REGIONS_B": B,
        "DISPATCHER_REGIONS_EU_WEST": EU,
        "DISPATCHER_REGIONS_C": C,
    }
    cfg = load(path, environ)
    assert cfg.region == "a"
    assert cfg.regions == {"a": A, "b": B, "c": C, "eu_west": EU}
    assert cfg.redis.url == A
    only_file = load(path, {})
    assert (only_file.region, only_file.redis.url) == ("b", "redis://old:6379/0")


def test_redis_url_may_repeat_this_regions_url() -> None:
    """redis.url set to exactly regions[region] is accepted."""
    cfg = load(
        None,
        {"DISPATCHER_REGION": "a", "DISPATCHER_REGIONS_A": A, "DISPATCHER_REDIS_URL": A},
    )
    assert cfg.redis.url == A


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"DISPATCHER_REGIONS_A": A}, "region: [regions] is set (a): region must name"),
        ({"DISPATCHER_REGION": "a"}, 'region: "a" needs [regions]'),
        (
            {"DISPATCHER_REGION": "c", "DISPATCHER_REGIONS_A": A, "DISPATCHER_REGIONS_B": B},
            'region: "c" is not in [regions] (a, b)',
        ),
        (
            {
                "DISPATCHER_REGION": "a",
                "DISPATCHER_REGIONS_A": A,
                "DISPATCHER_REDIS_URL": "redis://:pa55-a@elsewhere:6379/0",
            },
            (
                'redis.url: "redis://:***@elsewhere:6379/0" is not regions.a '
                '("redis://:***@a.example:6379/0")'
            ),
        ),
        ({"DISPATCHER_REGION": "Eu"}, "region: a region name is a-z, then up to 15"),
        (
            {"DISPATCHER_REGION": "a", "DISPATCHER_REGIONS_A": A, "DISPATCHER_REGIONS_9X": B},
            (
                "regions.9x: a region name is a-z, then up to 15 of a-z, 0-9 or '_', got \"9x\" "
                "(from DISPATCHER_REGIONS_9X)"
            ),
        ),
        (
            {"DISPATCHER_REGION": "a", "DISPATCHER_REGIONS_A": "http://:pa55-a@a.example/0"},
            'regions.a: unsupported scheme in "http://:***@a.example/0"',
        ),
        (
            {"DISPATCHER_REGION": "a", "DISPATCHER_REGIONS_A": A, "DISPATCHER_REGIONS_B": A},
            "regions.b: the same URL as regions.a",
        ),
        ({"DISPATCHER_REGIONS": A}, "DISPATCHER_REGIONS: unknown environment variable"),
    ],
)
def test_each_region_problem_is_one_line_naming_its_key(
    environ: dict[str, str], expected: str
) -> None:
    """Every region mistake is refused with one line that starts with the key to fix and never
    shows a password."""
    problems = problems_of(None, environ)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]
    assert "\n" not in problems[0]
    assert not any(word in problems[0] for word in PASSWORDS)


def test_file_problems_name_the_file(tmp_path: Path) -> None:
    """A bad entry or a [regions] that is not a table names the key and the file."""
    path = write(tmp_path, 'region = "a"\n[regions]\na = "redis://h:1/0"\nb = 5\nc = ""\n')
    assert problems_of(path, {}) == [
        f"regions.b: expected a string, got 5 (from {path})",
        f"regions.c: must not be empty: each region needs its Redis URL (from {path})",
    ]
    path = write(tmp_path, 'region = "a"\nregions = "redis://h:1/0"\n')
    assert problems_of(path, {})[0] == 'regions: expected a table [regions], got "redis://h:1/0"'


def test_check_config_shows_regions_with_every_password_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints region and every region's URL (cluster and sentinel forms too) with
    its password as ***, and redis.url, which defaults to this region's, likewise."""
    environ = {
        "DISPATCHER_REGION": "a",
        "DISPATCHER_REGIONS_A": A,
        "DISPATCHER_REGIONS_B": B,
        "DISPATCHER_REGIONS_C": C,
        "DISPATCHER_REGIONS_EU": EU,
    }
    _only_env(monkeypatch, environ)
    assert cli.main(["check-config"]) == 0
    text = capsys.readouterr().out
    assert not any(word in text for word in PASSWORDS)
    shown = orjson.loads(text)
    assert shown["region"] == "a"
    assert shown["regions"] == {
        "a": "redis://:***@a.example:6379/0",
        "b": "rediss://user:***@b.example:6380/0",
        "c": "redis+sentinel://:***@s1.example:26379,s2.example:26379/mymaster",
        "eu": "redis+cluster://:***@n1.example:7000,n2.example:7001",
    }
    assert shown["redis"]["url"] == "redis://:***@a.example:6379/0"
    assert shown == redacted(load(None, environ))


def test_without_regions_config_and_check_config_are_as_before(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No region keys: the config is the default one and check-config's JSON has exactly the
    keys it had before regions (no region, no regions)."""
    assert load(None, {}) == Config()
    assert (Config().region, Config().regions) == (None, {})
    _only_env(monkeypatch, {})
    assert cli.main(["check-config"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert list(shown) == ["state_dir", *SECTIONS]
    assert shown == redacted(Config())


def test_region_keys_need_a_restart() -> None:
    """A reload names region and regions as changed but does not apply them live."""
    old = load(None, {"DISPATCHER_REGION": "a", "DISPATCHER_REGIONS_A": A})
    new = load(
        None,
        {"DISPATCHER_REGION": "b", "DISPATCHER_REGIONS_A": A, "DISPATCHER_REGIONS_B": B},
    )
    changed = changed_keys(old, new)
    assert changed == ["region", "regions", "redis.url"]
    assert not set(changed) & LIVE_KEYS
    assert with_keys(old, new, ["region", "regions"]).regions == new.regions


def _only_env(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> None:
    """The process environment holds ``environ`` and no other DISPATCHER_* variable."""
    for name in [n for n in os.environ if n.startswith("DISPATCHER_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
