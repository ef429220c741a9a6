"""The rules a request body or header must keep beyond its shape: each check returns the
value to use or raises BadRequest naming where the request breaks it."""

from __future__ import annotations

from collections.abc import Collection

from contracts.paths import PathRejected, safe_path
from contracts.schema import ProjectSchema, schema_problems
from contracts.text import text_problem
from services.gateway.errors import BadRequest


def checked_project_name(name: str) -> str:
    """The project's name as it is stored (trimmed), or BadRequest."""
    refused = text_problem(name)
    if refused:
        raise BadRequest(
            f"project_name {refused}.",
            problems=[{"location": "project_name", "message": refused}],
        )
    return name.strip() or "project"


def check_schema(schema: ProjectSchema) -> None:
    """BadRequest listing every rule the entity schema breaks (the first 20 in `detail`)."""
    problems = schema_problems(schema)
    if problems:
        raise BadRequest(
            "The schema is not valid: "
            + "; ".join(f"schema.{p.location}: {p.message}" for p in problems[:20]),
            problems=[{"location": f"schema.{p.location}", "message": p.message} for p in problems],
        )


def checked_locked_paths(paths: list[str], parent_files: Collection[str]) -> list[str]:
    """The locked paths, normalised, sorted and unique; each must be a file of the parent."""
    locked: set[str] = set()
    for index, path in enumerate(paths):
        location = f"locked_paths[{index}]"
        try:
            normalised = safe_path(path)
        except PathRejected as exc:
            raise BadRequest(
                f"{location}: {exc}", problems=[{"location": location, "message": exc.reason}]
            ) from None
        if normalised not in parent_files:
            raise BadRequest(
                f"{location}: {normalised!r} is not a file of the parent version.",
                problems=[{"location": location, "message": "not a file of the parent"}],
            )
        locked.add(normalised)
    return sorted(locked)


def checked_file_path(path: str) -> str:
    """A file path from the URL, as the read model stores it, or BadRequest."""
    try:
        return safe_path(path.lstrip("/"))
    except PathRejected as exc:
        raise BadRequest(str(exc)) from None


def resume_after(header: str | None, query: int | None) -> int:
    """The stream sequence an SSE client has seen: the larger of `Last-Event-ID` (header)
    and `?last_event_id=`, 0 for neither; BadRequest for a header that is not a number."""
    after = query or 0
    if header:
        try:
            after = max(after, int(header))
        except ValueError:
            raise BadRequest(
                "The Last-Event-ID header must be a number (an SSE id from this stream)."
            ) from None
    return after
