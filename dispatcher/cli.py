"""``dispatcher run`` and ``dispatcher check-config``; exit 0, or 2 for a bad configuration."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import orjson
import uvloop

from dispatcher import __version__, daemon
from dispatcher.config import CONFIG_ENV, Config, load, redacted
from dispatcher.config_values import queue_names
from dispatcher.errors import ConfigError
from dispatcher.logs import configure_logging
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
    configure_logging(cfg.log.level, cfg.log.format)
    return uvloop.run(daemon.run(cfg, reload=lambda: _effective(args)))
