"""`kiln asyncapi`: print the AsyncAPI 3.0 document generated from `contracts/`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from contracts.asyncapi import render


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add `kiln asyncapi` to the `kiln` command's subcommands."""
    parser = commands.add_parser(
        "asyncapi", help="print the AsyncAPI 3.0 document of Kiln's subjects and payloads"
    )
    parser.add_argument("-o", "--output", help="write it to this file instead")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print (or write) the document; the exit code."""
    document = render()
    if args.output:
        Path(args.output).write_bytes(document)
    else:
        sys.stdout.buffer.write(document)
        sys.stdout.flush()
    return 0
