"""The client subcommands of `kiln`. Each returns its exit code: 0 done, 1 the generation
failed or was cancelled, 2 the request itself failed (usage, network, HTTP error), 3 the
generation completed but its own tests failed in Kiln's sandbox (`--follow`, `watch`)."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contracts.events import (
    GenerationCancelled,
    GenerationCompleted,
    GenerationFailed,
    VerifyCompleted,
    VerifyUnavailable,
)
from contracts.state import GenerationState, apply, new_state
from services.cli.client.connection import ClientError, Gateway, add_connection_arguments
from services.cli.client.extract import UnsafeArchive, extract
from services.cli.client.follow import Reconnecting, StreamEvent, follow
from services.cli.client.render import renderer_for
from services.cli.client.responses import Accepted, AuditLog, GenerationStatus, ProjectList

Handler = Callable[[Gateway, argparse.Namespace], int]

EXIT_OK, EXIT_GENERATION_FAILED, EXIT_ERROR, EXIT_TESTS_FAILED = 0, 1, 2, 3


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
    iterate.add_argument("--model", help="default: the parent's model")
    iterate.add_argument("--follow", action="store_true", help="follow it to its end")

    watch = _command(
        commands, "watch", "follow a generation (replays what already happened)", _watch
    )
    watch.add_argument("generation_id", metavar="GEN_ID")

    status = _command(commands, "status", "where a generation stands", _status)
    status.add_argument("generation_id", metavar="GEN_ID")
    status.add_argument("--json", action="store_true", help="the gateway's JSON")

    _command(commands, "projects", "your projects and their versions", _projects)

    download = _command(commands, "download", "a version's files as a zip", _download)
    download.add_argument("generation_id", metavar="GEN_ID")
    target = download.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the zip here")
    target.add_argument("--extract", type=Path, metavar="DIR", help="extract it (validated) here")

    diff = _command(commands, "diff", "a version against its parent, as a patch", _diff)
    diff.add_argument("generation_id", metavar="GEN_ID")

    events = _command(commands, "events", "a generation's events as a timeline", _events)
    events.add_argument("generation_id", metavar="GEN_ID")
    events.add_argument("--json", action="store_true", help="the gateway's audit log as JSON")


def _command(
    commands: argparse._SubParsersAction[Any], name: str, help_text: str, handler: Handler
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    add_connection_arguments(parser)
    parser.set_defaults(handler=lambda args: _run(handler, args))
    return parser


def _run(handler: Handler, args: argparse.Namespace) -> int:
    gateway = Gateway.from_args(args)
    try:
        return handler(gateway, args)
    except ClientError as exc:
        print(f"kiln {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kiln events … | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        gateway.close()


def _generate(gateway: Gateway, args: argparse.Namespace) -> int:
    try:
        document = json.loads(args.schema.read_text())
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot read the schema {args.schema}: {exc}") from None
    schema = document.get("schema", document) if isinstance(document, dict) else document
    body: dict[str, Any] = {
        "project_name": args.project or args.schema.stem,
        "schema": schema,
        "prompt": args.prompt,
    }
    body |= {key: getattr(args, key) for key in ("provider", "model") if getattr(args, key)}
    accepted = gateway.decoded("POST", "/generations", Accepted, json=body, headers=once())
    return _accepted(gateway, accepted, args.follow)


def once() -> dict[str, str]:
    """Headers that make a create or iterate safe to send again: a fresh Idempotency-Key
    (the gateway answers a repeat with the generation the first attempt made)."""
    return {"Idempotency-Key": str(uuid.uuid4())}


def _iterate(gateway: Gateway, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "parent_generation_id": args.generation_id,
        "modification_prompt": args.prompt,
        "locked_paths": args.lock,
    }
    body |= {key: getattr(args, key) for key in ("provider", "model") if getattr(args, key)}
    accepted = gateway.decoded("POST", "/generations/iterate", Accepted, json=body, headers=once())
    return _accepted(gateway, accepted, args.follow)


def _accepted(gateway: Gateway, accepted: Accepted, follow_it: bool) -> int:
    print(
        f"generation {accepted.generation_id} (project {accepted.project_id}, "
        f"version {accepted.version})",
        flush=True,
    )
    if not follow_it:
        print(f"follow it: kiln watch {accepted.generation_id}")
        return EXIT_OK
    return _follow(gateway, accepted.generation_id, accepted.stream_url)


def _watch(gateway: Gateway, args: argparse.Namespace) -> int:
    return _follow(gateway, args.generation_id, None)


def _follow(gateway: Gateway, generation_id: str, stream_url: str | None) -> int:
    """Show the generation to its end; the exit code its end calls for."""
    renderer = renderer_for()
    last: StreamEvent | None = None
    verification: VerifyCompleted | VerifyUnavailable | None = None
    state: GenerationState | None = None
    try:
        for item in follow(gateway, generation_id, stream_url=stream_url):
            if isinstance(item, Reconnecting):
                renderer.reconnecting(item)
            else:
                renderer.event(item)
                last = item
                if item.event is not None:
                    state = apply(state or new_state(item.event), item.event)
                if isinstance(item.event, VerifyCompleted | VerifyUnavailable):
                    verification = item.event
    finally:
        renderer.close()
    match last.event if last is not None else None:
        case GenerationCompleted(file_count=count, total_bytes=size):
            print(f"{count} files, {size} bytes: kiln download {generation_id} --extract DIR")
            folded = state.summary.verification if state is not None else None
            if folded is not None and folded.repairs:
                print(folded.headline)
            if isinstance(verification, VerifyCompleted) and verification.verdict == "failed":
                failed = folded or verification
                print(
                    f"kiln: generation {generation_id} completed, but its own tests failed "
                    f"({failed.failed} failed, {failed.errors} errors)"
                    + (f": {folded.headline}" if folded is not None and folded.repairs else ""),
                    file=sys.stderr,
                )
                return EXIT_TESTS_FAILED
            return EXIT_OK
        case GenerationFailed(phase=phase, message=message, files_kept=kept):
            print(
                f"kiln: generation {generation_id} failed in phase {phase or '-'}: {message} "
                f"({kept} files kept: kiln download {generation_id} --extract DIR)",
                file=sys.stderr,
            )
            return EXIT_GENERATION_FAILED
        case GenerationCancelled(by=by, reason=reason, phase=phase, files_kept=kept):
            print(
                f"kiln: generation {generation_id} was cancelled by {by} in phase "
                f"{phase or '-'}: {reason or 'no reason given'} ({kept} files kept)",
                file=sys.stderr,
            )
            return EXIT_GENERATION_FAILED
    # A 204 before any terminal event: the stream says it is over; ask how it ended.
    status = gateway.decoded("GET", f"/generations/{generation_id}", GenerationStatus)
    return _report_status(status)


def _status(gateway: Gateway, args: argparse.Namespace) -> int:
    response = gateway.request("GET", f"/generations/{args.generation_id}")
    status = gateway.decode(response, GenerationStatus)
    if args.json:
        print(json.dumps(response.json(), indent=2))
    else:
        print(
            f"{status.project_name} v{status.version} ({status.generation_id}): "
            f"{status.status} {status.progress}%, phase {status.phase or '-'}, "
            f"{status.file_count} files ({status.total_bytes} bytes), "
            f"provider {status.provider}{f' {status.model}' if status.model else ''}"
        )
    return _report_status(status, quiet=args.json)


def _report_status(status: GenerationStatus, *, quiet: bool = False) -> int:
    if status.status not in ("failed", "cancelled"):
        return EXIT_OK
    if not quiet:
        error = status.error
        print(
            f"kiln: generation {status.generation_id} {status.status} in phase "
            f"{(error.phase if error else None) or status.phase or '-'}: "
            f"{error.message if error else 'no message'} ({status.file_count} files kept)",
            file=sys.stderr,
        )
    return EXIT_GENERATION_FAILED


def _projects(gateway: Gateway, args: argparse.Namespace) -> int:
    projects = gateway.decoded("GET", "/projects", ProjectList).projects
    if not projects:
        print("no projects yet: kiln generate SCHEMA.json --prompt '…' --follow")
    for project in projects:
        print(f"{project.name}  {project.project_id}  (latest v{project.latest_version})")
        for v in project.versions:
            parent = f"  from {v.parent_generation_id}" if v.parent_generation_id else ""
            print(
                f"  v{v.version:<3} {v.status:<9} {v.progress:>3}%  {v.file_count:>4} files  "
                f"{v.generation_id}{parent}"
            )
    return EXIT_OK


def _download(gateway: Gateway, args: argparse.Namespace) -> int:
    content = gateway.request("GET", f"/generations/{args.generation_id}/archive").content
    if args.output:
        args.output.write_bytes(content)
        print(f"wrote {args.output} ({len(content)} bytes)")
        return EXIT_OK
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            written = extract(archive, args.extract)
    except (UnsafeArchive, zipfile.BadZipFile) as exc:
        raise ClientError(f"refusing to extract: {exc}; nothing was written") from None
    print(f"extracted {len(written)} files into {args.extract}")
    return EXIT_OK


def _diff(gateway: Gateway, args: argparse.Namespace) -> int:
    patch = gateway.request(
        "GET", f"/generations/{args.generation_id}/diff", params={"format": "patch"}
    )
    sys.stdout.write(patch.text)
    return EXIT_OK


def _events(gateway: Gateway, args: argparse.Namespace) -> int:
    path = f"/generations/{args.generation_id}/events"
    if args.json:
        print(json.dumps(gateway.request("GET", path).json(), indent=2))
        return EXIT_OK
    log = gateway.decoded("GET", path, AuditLog)
    if log.events:
        start = log.events[0].at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"generation {log.generation_id}: {log.count} events from {start} (times in UTC)")
    print(f"{'seq':>4}  {'time':<12}  {'type':<20}  {'phase':<9}  detail")
    for entry in log.events:
        print(
            f"{entry.seq:>4}  {entry.at.strftime('%H:%M:%S.%f')[:12]:<12}  {entry.type:<20}  "
            f"{entry.event.get('phase') or '':<9}  {_detail(entry.type, entry.event)}"
        )
    return EXIT_OK


def _detail(kind: str, event: dict[str, Any]) -> str:
    """The one thing worth knowing about an event of the audit log."""
    match kind:
        case "generation.requested":
            return f"{event.get('kind', 'create')} {event.get('project_name')!r} v{event.get('version')}"
        case "generation.started" | "generation.resumed":
            return f"worker {event.get('worker')}"
        case "file.written":
            return f"{event.get('path')} ({event.get('size')} B)"
        case "file.deleted":
            return f"{event.get('path')}: {event.get('reason')}"
        case "version.based_on":
            return f"{len(event.get('files') or [])} files inherited from {event.get('parent_generation_id')}"
        case "llm.called":
            return (
                f"{event.get('provider')} {event.get('model')}: {event.get('tokens_in')} in, "
                f"{event.get('tokens_out')} out, {event.get('latency_ms')} ms"
            )
        case "llm.retrying":
            return f"{event.get('reason')}, retry in {event.get('delay_s')} s"
        case "phase.completed":
            return f"{len(event.get('files') or [])} files, {event.get('duration_ms')} ms"
        case "generation.completed":
            return f"{event.get('file_count')} files, {event.get('total_bytes')} bytes"
        case "generation.failed":
            return f"{event.get('message')} ({event.get('files_kept')} files kept)"
        case "generation.cancelled":
            return f"by {event.get('by')}: {event.get('reason')}"
    return str(event.get("summary") or event.get("title") or "")
