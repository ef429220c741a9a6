"""The client subcommands of `kiln`. Each returns its exit code: 0 done, 1 the generation
failed or was cancelled, 2 the request itself failed (usage, network, HTTP error)."""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.cli.client.connection import ClientError, Gateway, add_connection_arguments
from services.cli.client.extract import UnsafeArchive, extract
from services.cli.client.follow import Reconnecting, follow
from services.cli.client.render import describe, renderer_for

Handler = Callable[[Gateway, argparse.Namespace], int]


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add the client commands to the `kiln` command's subcommands."""
    generate = _command(
        commands, "generate", "create a project and generate its first version", _generate
    )
    generate.add_argument("schema", metavar="SCHEMA.json", type=Path, help="the entity schema")
    generate.add_argument("--prompt", default="", help="what the project is for")
    generate.add_argument("--project", help="project name (default: the schema file's name)")
    generate.add_argument("--provider", help="offline (default), gemini or openai")
    generate.add_argument("--model", help="the provider's model")
    generate.add_argument("--follow", action="store_true", help="follow it to its end")

    iterate = _command(commands, "iterate", "make a new version from a completed one", _iterate)
    iterate.add_argument("generation_id", metavar="GEN_ID", help="the parent version")
    iterate.add_argument("prompt", help='the change, e.g. "add authentication"')
    iterate.add_argument(
        "--lock", action="append", default=[], metavar="PATH", help="a file that must not change"
    )
    iterate.add_argument("--provider", help="default: the parent's provider")
    iterate.add_argument("--follow", action="store_true", help="follow it to its end")

    watch = _command(
        commands, "watch", "follow a generation (replays what already happened)", _watch
    )
    watch.add_argument("generation_id", metavar="GEN_ID")

    status = _command(commands, "status", "where a generation stands", _status)
    status.add_argument("generation_id", metavar="GEN_ID")
    status.add_argument("--json", action="store_true", help="the raw JSON")

    _command(commands, "projects", "your projects and their versions", _projects)

    download = _command(commands, "download", "a version's files as a zip", _download)
    download.add_argument("generation_id", metavar="GEN_ID")
    target = download.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--output", type=Path, help="write the zip here")
    target.add_argument("--extract", type=Path, metavar="DIR", help="extract it (validated) here")

    diff = _command(commands, "diff", "a version against its parent, as a patch", _diff)
    diff.add_argument("generation_id", metavar="GEN_ID")

    events = _command(commands, "events", "a generation's events as a timeline", _events)
    events.add_argument("generation_id", metavar="GEN_ID")
    events.add_argument("--json", action="store_true", help="one JSON object per event")


def _command(
    commands: argparse._SubParsersAction[Any], name: str, help_text: str, handler: Handler
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text)
    add_connection_arguments(parser)
    parser.set_defaults(handler=lambda args: _run(handler, args))
    return parser


def _run(handler: Handler, args: argparse.Namespace) -> int:
    gateway = Gateway.from_args(args)
    try:
        return handler(gateway, args)
    except ClientError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        gateway.close()


def _generate(gateway: Gateway, args: argparse.Namespace) -> int:
    try:
        document = json.loads(args.schema.read_text())
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot read the schema {args.schema}: {exc}") from None
    schema = document.get("schema", document) if isinstance(document, dict) else document
    body = {
        "project_name": args.project or args.schema.stem,
        "schema": schema,
        "prompt": args.prompt,
        "provider": args.provider,
        "model": args.model,
    }
    accepted = gateway.json("POST", "/generations", json={k: v for k, v in body.items() if v})
    return _accepted(gateway, accepted, args.follow)


def _iterate(gateway: Gateway, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "parent_generation_id": args.generation_id,
        "modification_prompt": args.prompt,
        "locked_paths": args.lock,
    }
    if args.provider:
        body["provider"] = args.provider
    accepted = gateway.json("POST", "/generations/iterate", json=body)
    return _accepted(gateway, accepted, args.follow)


def _accepted(gateway: Gateway, accepted: dict[str, Any], follow_it: bool) -> int:
    print(
        f"generation {accepted['generation_id']} (project {accepted['project_id']}, "
        f"version {accepted['version']})"
    )
    if not follow_it:
        return 0
    return _follow(gateway, accepted["generation_id"], accepted["stream_url"])


def _watch(gateway: Gateway, args: argparse.Namespace) -> int:
    return _follow(gateway, args.generation_id, None)


def _follow(gateway: Gateway, generation_id: str, stream_url: str | None) -> int:
    renderer = renderer_for()
    last = None
    try:
        for item in follow(gateway, generation_id, stream_url=stream_url):
            if isinstance(item, Reconnecting):
                renderer.reconnecting(item)
            else:
                renderer.event(item)
                last = item
    finally:
        renderer.close()
    status = gateway.json("GET", f"/generations/{generation_id}")
    if status["status"] == "completed":
        print(f"{status['file_count']} files: kiln download {generation_id} --extract DIR")
        return 0
    error = status.get("error") or {}
    message = error.get("message") or (describe(last) if last else status["status"])
    print(f"kiln: generation {generation_id} {status['status']}: {message}", file=sys.stderr)
    return 1


def _status(gateway: Gateway, args: argparse.Namespace) -> int:
    status = gateway.json("GET", f"/generations/{args.generation_id}")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(
        f"{status['project_name']} v{status['version']}: {status['status']} "
        f"{status['progress']}% (phase {status['phase'] or '-'}), {status['file_count']} files, "
        f"provider {status['provider']}"
    )
    if status.get("error"):
        print(f"  {status['error']['message']}")
    return 1 if status["status"] in ("failed", "cancelled") else 0


def _projects(gateway: Gateway, args: argparse.Namespace) -> int:
    for project in gateway.json("GET", "/projects")["projects"]:
        print(f"{project['name']}  ({project['project_id']})")
        for version in project["versions"]:
            parent = version.get("parent_generation_id")
            print(
                f"  v{version['version']}  {version['status']:<9}  {version['generation_id']}"
                + (f"  from {parent}" if parent else "")
            )
    return 0


def _download(gateway: Gateway, args: argparse.Namespace) -> int:
    content = gateway.request("GET", f"/generations/{args.generation_id}/archive").content
    if args.output:
        args.output.write_bytes(content)
        print(f"wrote {args.output} ({len(content)} bytes)")
        return 0
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            written = extract(archive, args.extract)
    except (UnsafeArchive, zipfile.BadZipFile) as exc:
        raise ClientError(f"refusing to extract: {exc}; nothing was written") from None
    print(f"extracted {len(written)} files into {args.extract}")
    return 0


def _diff(gateway: Gateway, args: argparse.Namespace) -> int:
    patch = gateway.request("GET", f"/generations/{args.generation_id}/diff?format=patch")
    sys.stdout.write(patch.text)
    return 0


def _events(gateway: Gateway, args: argparse.Namespace) -> int:
    log = gateway.json("GET", f"/generations/{args.generation_id}/events")
    if args.json:
        for entry in log["events"]:
            print(json.dumps(entry))
        return 0
    print(f"{'seq':>4}  {'at':<24} {'type':<22} {'phase':<8} detail")
    for entry in log["events"]:
        event = entry["event"]
        line = _detail(entry["type"], event)
        print(
            f"{entry['seq']:>4}  {entry['at'][:23]:<24} {entry['type']:<22} "
            f"{event.get('phase') or '':<8} {line}"
        )
    return 0


def _detail(kind: str, event: dict[str, Any]) -> str:
    if kind in ("file.written", "file.deleted"):
        return str(event.get("path", ""))
    if kind == "generation.failed":
        return str(event.get("message", ""))
    if kind == "llm.called":
        return f"{event.get('tokens_in')} in / {event.get('tokens_out')} out"
    return str(event.get("summary", "") or "")
