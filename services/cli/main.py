"""The `kiln` command."""

from __future__ import annotations

import argparse
import sys

from contracts import __version__
from services.cli import asyncapi, audit
from services.cli.client import commands as client_commands
from services.common.settings import SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln", description="Kiln: generate whole projects phase by phase."
    )
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up", help="run all of Kiln on this machine (embedded NATS and SQLite)"
    )
    up.add_argument("--host", help="address the gateway binds (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="port of the gateway (default 8000)")
    up.add_argument("--data-dir", help="where Kiln keeps its data (default ./.kiln)")
    up.add_argument(
        "--nats-port", type=int, help="port of the embedded nats-server (default: a free one)"
    )

    commands.add_parser("orchestrator", help="run one orchestrator (configured by the environment)")
    commands.add_parser("storage", help="run one storage projector (configured by the environment)")
    commands.add_parser(
        "verifier", help="run one verifier (sandboxed tests of each version; the environment)"
    )
    gateway = commands.add_parser("gateway", help="run one gateway (configured by the environment)")
    gateway.add_argument("--host", help="address to bind")
    gateway.add_argument("--port", type=int, help="port to listen on")
    migrate = commands.add_parser(
        "migrate", help="create or upgrade the read model's database and the broker's streams"
    )
    migrate.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="how long to wait for the broker to accept connections and for JetStream to be "
        "ready, as a cluster just started elects its leader (default 30)",
    )
    settings = commands.add_parser("settings", help="list every setting")
    settings.add_argument("--markdown", action="store_true", help="as the README's table")
    for module in (client_commands, asyncapi, audit):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `kiln` command."""
    args = _parser().parse_args(argv)
    if handler := getattr(args, "handler", None):
        sys.exit(handler(args))
    try:
        overrides = {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "data_dir": getattr(args, "data_dir", None),
        }
        settings = load_settings(**overrides)
        if args.command == "up":
            from services.cli.up import up

            up(settings, args.nats_port)
        elif args.command == "orchestrator":
            from services.cli.services import run_orchestrator

            run_orchestrator(settings)
        elif args.command == "storage":
            from services.cli.services import run_storage

            run_storage(settings)
        elif args.command == "verifier":
            from services.cli.services import run_verifier

            run_verifier(settings)
        elif args.command == "gateway":
            from services.cli.services import run_gateway

            run_gateway(settings)
        elif args.command == "migrate":
            from services.cli.migrate import BROKER_WAIT_S, MigrationFailed, migrate

            try:
                migrate(settings, wait_s=BROKER_WAIT_S if args.wait is None else args.wait)
            except MigrationFailed as exc:
                sys.exit(f"kiln migrate: {exc}")
        elif args.command == "settings":
            from services.cli.settings_doc import settings_table

            print(settings_table(markdown=args.markdown))
    except SettingsError as exc:
        sys.exit(f"kiln: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
