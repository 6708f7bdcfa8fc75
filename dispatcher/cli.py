"""``dispatcher run``, ``check-config`` and ``rekey``; exit 0, or 2 for a bad configuration
(``rekey``: 1 when some webhook's secrets no configured key opens)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from urllib.parse import quote

import orjson
import uvloop

from dispatcher import __version__, daemon
from dispatcher.config import CONFIG_ENV, Config, load, redacted
from dispatcher.config_values import queue_names
from dispatcher.crypto import Keyring
from dispatcher.embedded import SOCKET_NAME
from dispatcher.errors import ConfigError, DispatcherError
from dispatcher.logs import configure_logging
from dispatcher.queue import encryption, rekey
from dispatcher.queue.store import Store
from dispatcher.tasks import TASK_QUEUES, load_modules


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatcher", description="Reliable webhook delivery from Redis."
    )
    parser.add_argument("--version", action="version", version=f"dispatcher {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run the daemon: senders, promoter, reclaimer and admin API"),
        ("check-config", "validate the configuration and print it as JSON, secrets redacted"),
        ("rekey", "encrypt every webhook's secrets with the first security.encryption_keys key"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--config",
            metavar="PATH",
            default=os.environ.get(CONFIG_ENV) or None,
            help=f"TOML file (default: ${CONFIG_ENV}, else defaults and environment)",
        )
        if name == "run":
            sub.add_argument(
                "--queues",
                metavar="Q1,Q2",
                help="the queues this process serves (overrides delivery.queues)",
            )
        if name == "rekey":
            sub.add_argument(
                "--dry-run", action="store_true", help="count what would change, write nothing"
            )
    return parser


def _effective(args: argparse.Namespace) -> Config:
    """The config file and environment, then ``--queues``: at start, and again on SIGHUP."""
    cfg = load(args.config, os.environ)
    if getattr(args, "queues", None) is not None:
        try:
            queues = queue_names(args.queues)
        except ValueError as exc:
            raise ConfigError([f"--queues: {exc.args[0]}"]) from None
        taken = [q for q in queues if q in TASK_QUEUES]
        if taken:  # as delivery.queues (config.py): the worker would claim task jobs
            problem = (
                f"--queues: {', '.join(taken)}: the task queues are served by every daemon's "
                "task lanes (tasks.concurrency), not by delivery"
            )
            raise ConfigError([problem])
        cfg = dataclasses.replace(cfg, delivery=dataclasses.replace(cfg.delivery, queues=queues))
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = _effective(args)
        if args.command == "check-config":
            load_modules(cfg.tasks.modules)  # `run` imports them at start (daemon.py)
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"config error: {problem}\n")
        return 2
    if args.command == "check-config":
        sys.stdout.buffer.write(orjson.dumps(redacted(cfg), option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if args.command == "rekey":
        configure_logging(cfg.log.level, cfg.log.format)
        return uvloop.run(_rekey(cfg, dry_run=args.dry_run))
    configure_logging(cfg.log.level, cfg.log.format)
    return uvloop.run(daemon.run(cfg, reload=lambda: _effective(args)))


async def _rekey(cfg: Config, *, dry_run: bool) -> int:
    """Re-seal every webhook under the first key; the report is one JSON line on stdout."""
    keyring = Keyring.of(cfg.security.encryption_keys)
    if keyring is None:
        return _config_error("security.encryption_keys: dispatcher rekey needs at least one key")
    url = cfg.redis.url
    socket = cfg.state_dir / SOCKET_NAME
    if url is None and socket.exists():  # the running daemon's embedded Redis
        url = f"unix://{quote(str(socket))}"
    if url is None:
        return _config_error(
            f"redis.url: not set, and no running daemon's socket at {socket}; "
            "start the daemon or set redis.url"
        )
    store = Store.open(url, prefix=cfg.redis.prefix, keyring=keyring)
    try:
        problem = encryption.problem(await encryption.read_kid(store), keyring)
        if problem is not None:
            return _config_error(problem)
        report = await rekey.run(store, dry_run=dry_run)
    except DispatcherError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 1
    finally:
        await store.close()
    sys.stdout.buffer.write(orjson.dumps(report.to_wire()) + b"\n")
    return 1 if report.unreadable else 0


def _config_error(problem: str) -> int:
    sys.stderr.write(f"config error: {problem}\n")
    return 2
