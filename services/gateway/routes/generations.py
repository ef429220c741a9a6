"""/generations: create, iterate, follow, inspect, download, cancel."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import Provide
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from contracts.audit import verify_chain
from contracts.events import is_terminal
from contracts.paths import PathRejected, safe_path
from contracts.providers import DEFAULT_PROVIDER, KNOWN_PROVIDERS
from contracts.schema import schema_problems
from contracts.state import GenerationSummary
from contracts.text import text_problem
from services.common.eventlog import last_event
from services.common.logs import get_logger
from services.gateway.archive import build_zip, content_disposition
from services.gateway.diffs import as_patch, diff_versions, repaired_files
from services.gateway.errors import (
    BadRequest,
    Conflict,
    NotFound,
    Unauthorized,
    error_responses,
)
from services.gateway.routes.dependencies import (
    TOKEN_AUTH,
    GatewayDep,
    UserDep,
    checked_id,
    current_user,
    gateway,
    require_key,
)
from services.gateway.schemas import (
    Accepted,
    AuditEvent,
    AuditLog,
    CancelGeneration,
    ChainVerification,
    CreateGeneration,
    Diff,
    FileInfo,
    FileList,
    GenerationStatus,
    IterateGeneration,
    StreamToken,
)
from services.gateway.sse import SSEResponse, WatchSession
from services.gateway.tokens import TokenInvalid
from services.gateway.views import stream_url

log = get_logger(__name__)

LOCATION = ResponseHeader(
    name="Location",
    description="The new generation's status URL (`/generations/{generation_id}`).",
    documentation_only=True,
)


def _provider(gw: GatewayDep, name: str | None) -> str:
    provider = name or DEFAULT_PROVIDER
    if provider not in KNOWN_PROVIDERS:
        raise BadRequest(
            f"Unknown provider {provider!r}; choose one of: {', '.join(KNOWN_PROVIDERS)}.",
            problems=[{"location": "provider", "message": "unknown provider"}],
        )
    if provider == "gemini" and not gw.settings.effective_gemini_key:
        raise BadRequest(
            "The gemini provider is not configured on this server: set GEMINI_API_KEY (or "
            "GOOGLE_API_KEY) for the orchestrator, or use the offline provider.",
            problems=[{"location": "provider", "message": "gemini has no API key configured"}],
        )
    if provider == "openai" and not gw.settings.openai_base_url:
        raise BadRequest(
            "The openai provider is not configured on this server: set KILN_OPENAI_BASE_URL "
            "(and KILN_OPENAI_API_KEY and KILN_OPENAI_MODEL as the endpoint needs) for the "
            "orchestrator, or use the offline provider.",
            problems=[{"location": "provider", "message": "openai has no base URL configured"}],
        )
    return provider


def _accepted(gw: GatewayDep, event: Any) -> Response[Accepted]:
    """The 201 of a new generation: where to follow it, and its status URL as `Location`."""
    token, _ = gw.tokens.issue(event.generation_id, event.owner)
    status_url = f"/generations/{event.generation_id}"
    return Response(
        _body(gw, event, token, status_url), status_code=201, headers={"Location": status_url}
    )


def _body(gw: GatewayDep, event: Any, token: str, status_url: str) -> Accepted:
    return Accepted(
        generation_id=event.generation_id,
        project_id=event.project_id,
        version=event.version,
        status="pending",
        sse_token=token,
        stream_url=stream_url(event.generation_id, token),
        status_url=status_url,
        parent_generation_id=event.parent_generation_id,
    )


class GenerationController(Controller):
    """Generations: each one version of a project, built phase by phase."""

    path = "/generations"
    tags = ["generations"]
    guards = [require_key]
    dependencies = {
        "gw": Provide(gateway, sync_to_thread=False),
        "user": Provide(current_user, sync_to_thread=False),
    }

    @post(
        "/",
        status_code=201,
        summary="Create a project and generate its first version",
        response_headers=[LOCATION],
        responses=error_responses(400, 401, 413, 429, 503),
    )
    async def create(
        self, data: JSONBody[CreateGeneration], gw: GatewayDep, user: UserDep
    ) -> Response[Accepted]:
        """Accepts the request, publishes it, and returns where to follow it."""
        refused = text_problem(data.project_name)
        if refused:
            raise BadRequest(
                f"project_name {refused}.",
                problems=[{"location": "project_name", "message": refused}],
            )
        problems = schema_problems(data.schema)
        if problems:
            raise BadRequest(
                "The schema is not valid: "
                + "; ".join(f"schema.{p.location}: {p.message}" for p in problems[:20]),
                problems=[
                    {"location": f"schema.{p.location}", "message": p.message} for p in problems
                ],
            )
        provider = _provider(gw, data.provider)
        gw.rate_limit.take(user)
        event = await gw.commands.create(
            owner=user,
            project_name=data.project_name.strip() or "project",
            schema=data.schema,
            prompt=data.prompt,
            provider=provider,
            model=data.model,
        )
        return _accepted(gw, event)

    @post(
        "/iterate",
        status_code=201,
        summary="Make a new version from any completed version",
        response_headers=[LOCATION],
        responses=error_responses(400, 401, 404, 409, 413, 429, 503),
    )
    async def iterate(
        self, data: JSONBody[IterateGeneration], gw: GatewayDep, user: UserDep
    ) -> Response[Accepted]:
        """The new version starts from the parent's files; nothing of the parent changes."""
        parent_id = checked_id(data.parent_generation_id)
        parent_state = await gw.views.state(parent_id, user)
        parent = parent_state.summary
        if parent.status != "completed":
            raise Conflict(
                f"The parent generation is {parent.status}; only a completed version can be "
                "iterated on." + (" Wait until it completes." if not parent.is_terminal else ""),
                parent_status=parent.status,
            )
        locked: list[str] = []
        for index, path in enumerate(data.locked_paths):
            try:
                normalised = safe_path(path)
            except PathRejected as exc:
                raise BadRequest(
                    f"locked_paths[{index}]: {exc}",
                    problems=[{"location": f"locked_paths[{index}]", "message": exc.reason}],
                ) from None
            if normalised not in parent_state.files:
                raise BadRequest(
                    f"locked_paths[{index}]: {normalised!r} is not a file of the parent version.",
                    problems=[
                        {
                            "location": f"locked_paths[{index}]",
                            "message": "not a file of the parent",
                        }
                    ],
                )
            locked.append(normalised)
        provider = _provider(gw, data.provider or parent.provider)
        project = await gw.read_model.project(parent.project_id)
        gw.rate_limit.take(user)
        event = await gw.commands.iterate(
            owner=user,
            parent=parent,
            prompt=data.modification_prompt,
            locked_paths=sorted(set(locked)),
            provider=provider,
            model=data.model or (parent.model if provider == parent.provider else None),
            latest_known_version=max(parent.version, project.latest_version if project else 0),
        )
        return _accepted(gw, event)

    @get(
        "/{generation_id:str}",
        summary="Where a generation stands",
        responses=error_responses(400, 401, 404, 503),
    )
    async def status(
        self, generation_id: FromPath[str], gw: GatewayDep, user: UserDep
    ) -> GenerationStatus:
        """Status, progress, phase, version, parent, files, timings, error."""
        return await gw.views.status(checked_id(generation_id), user)

    @get(
        "/{generation_id:str}/files",
        summary="The files of a version",
        responses=error_responses(400, 401, 404, 503),
    )
    async def files(self, generation_id: FromPath[str], gw: GatewayDep, user: UserDep) -> FileList:
        """Path, size and sha256 of every file of the version (so far, while it runs)."""
        view = await gw.views.settled(checked_id(generation_id), user)
        entries = await gw.read_model.files(view.generation_id)
        return FileList(
            generation_id=view.generation_id,
            version=view.version,
            status=view.status,
            file_count=len(entries),
            total_bytes=sum(e.size for e in entries),
            files=[
                FileInfo(path=e.path, size=e.size, sha256=e.sha256, phase=e.phase, origin=e.origin)
                for e in entries
            ],
        )

    @get(
        "/{generation_id:str}/files/{file_path:path}",
        summary="One file of a version",
        media_type="text/plain",
        responses=error_responses(400, 401, 404, 503),
    )
    async def file(
        self, generation_id: FromPath[str], file_path: FromPath[str], gw: GatewayDep, user: UserDep
    ) -> Response[bytes]:
        """The file's content."""
        view = await gw.views.settled(checked_id(generation_id), user)
        try:
            path = safe_path(file_path.lstrip("/"))
        except PathRejected as exc:
            raise BadRequest(str(exc)) from None
        found = await gw.read_model.file(view.generation_id, path)
        if found is None:
            raise NotFound(f"Version {view.version} has no file {path!r}.")
        entry, content = found
        return Response(
            content=content,
            media_type="text/plain; charset=utf-8",
            headers={
                "ETag": f'"{entry.sha256}"',
                "X-Content-SHA256": entry.sha256,
                "X-Content-Type-Options": "nosniff",
            },
        )

    @get(
        "/{generation_id:str}/archive",
        summary="The version as a zip",
        media_type="application/zip",
        responses=error_responses(400, 401, 404, 503),
    )
    async def archive(
        self, generation_id: FromPath[str], gw: GatewayDep, user: UserDep
    ) -> Response[bytes]:
        """Exactly the files of the version, at the root of the zip."""
        view = await gw.views.settled(checked_id(generation_id), user)
        contents = await gw.read_model.contents(view.generation_id)
        return Response(
            content=build_zip(contents),
            media_type="application/zip",
            headers={"Content-Disposition": content_disposition(view.project_name, view.version)},
        )

    @get(
        "/{generation_id:str}/diff",
        summary="The version against its parent",
        responses=error_responses(400, 401, 404, 503),
    )
    async def diff(
        self,
        generation_id: FromPath[str],
        gw: GatewayDep,
        user: UserDep,
        format: Annotated[str, QueryParameter(name="format", pattern="^(json|patch)$")] = "json",
    ) -> Response[Any]:
        """Per-file status and unified diffs (`?format=patch` for one patch text)."""
        view = await gw.views.settled(checked_id(generation_id), user)
        contents = await gw.read_model.contents(view.generation_id)
        parent_contents: dict[str, bytes] = {}
        if view.parent_generation_id:
            await gw.views.settled(view.parent_generation_id, user)
            parent_contents = await gw.read_model.contents(view.parent_generation_id)
        events = await gw.read_model.events(view.generation_id)
        reasons = {
            e.body.get("path", ""): e.body.get("reason", "")
            for e in events
            if e.type == "file.deleted"
        }
        repaired = repaired_files([(e.type, e.body) for e in events])
        summary, files = diff_versions(parent_contents, contents, reasons, repaired)
        if format == "patch":
            return Response(content=as_patch(files), media_type="text/x-diff; charset=utf-8")
        return Response(
            content=Diff(
                generation_id=view.generation_id,
                parent_generation_id=view.parent_generation_id,
                summary=summary,
                files=files,
            )
        )

    @get(
        "/{generation_id:str}/events",
        summary="The generation's audit log",
        responses=error_responses(400, 401, 404, 503),
    )
    async def events(
        self,
        generation_id: FromPath[str],
        gw: GatewayDep,
        user: UserDep,
        verify: FromQuery[bool] = False,
    ) -> AuditLog:
        """Every event in order, file contents left out (they are in /files).

        `?verify=true` also recomputes the hash chain from the stored events and names the
        first broken link, if any.
        """
        view = await gw.views.settled(checked_id(generation_id), user)
        entries = await gw.read_model.events(view.generation_id)
        report = verify_chain(await gw.read_model.stored_links(entries)) if verify else None
        return AuditLog(
            verification=msgspec.convert(msgspec.to_builtins(report), ChainVerification)
            if report
            else None,
            generation_id=view.generation_id,
            count=len(entries),
            events=[
                AuditEvent(
                    stream_seq=e.stream_seq,
                    seq=e.seq,
                    type=e.type,
                    at=e.at,
                    progress=e.progress,
                    event=e.body,
                    hash=e.hash,
                )
                for e in entries
            ],
        )

    @post(
        "/{generation_id:str}/stream-token",
        status_code=200,
        summary="A fresh SSE token",
        responses=error_responses(400, 401, 404, 413, 503),
    )
    async def stream_token(
        self, generation_id: FromPath[str], gw: GatewayDep, user: UserDep
    ) -> StreamToken:
        """SSE tokens are short-lived; a reconnecting page asks for a new one here."""
        state = await gw.views.status(checked_id(generation_id), user)
        token, expires = gw.tokens.issue(state.generation_id, user)
        return StreamToken(
            generation_id=state.generation_id,
            sse_token=token,
            stream_url=stream_url(state.generation_id, token),
            expires_at=datetime.fromtimestamp(expires, UTC),
        )

    @post(
        "/{generation_id:str}/cancel",
        status_code=202,
        summary="Cancel a pending or running generation",
        responses=error_responses(400, 401, 404, 409, 413, 503),
    )
    async def cancel(
        self,
        generation_id: FromPath[str],
        gw: GatewayDep,
        user: UserDep,
        data: JSONBody[CancelGeneration | None] = None,
    ) -> GenerationStatus:
        """Stops at the next step; the files written so far are kept."""
        state: GenerationSummary = (await gw.views.state(checked_id(generation_id), user)).summary
        if state.is_terminal:
            raise Conflict(
                f"The generation is already {state.status}; there is nothing to cancel.",
                generation_status=state.status,
            )
        await gw.commands.cancel(
            state, by=user, reason=(data.reason if data else "") or f"cancelled by {user}"
        )
        return await gw.views.status(state.generation_id, user)

    @get(
        "/{generation_id:str}/stream",
        summary="Server-Sent Events: replay, then live",
        media_type="text/event-stream",
        dependencies={"user": Provide(lambda: "", sync_to_thread=False)},
        opt={TOKEN_AUTH: True},
        security=[{"StreamToken": []}, {"BearerAuth": []}],
        responses={
            204: ResponseSpec(None, description="The stream had ended before Last-Event-ID."),
            **error_responses(400, 401, 404, 429, 503),
        },
    )
    async def stream(
        self,
        request: Request[Any, Any, Any],
        generation_id: FromPath[str],
        gw: GatewayDep,
        token: FromQuery[str | None] = None,
        last_event_id: Annotated[int | None, QueryParameter(name="last_event_id", ge=0)] = None,
    ) -> Response[Any]:
        """`id:` is the stream sequence, `event:` the type, `data:` the event as JSON.

        Authenticate with `?token=` (from the POST or /stream-token) or an API key. Resume
        with the `Last-Event-ID` header or `?last_event_id=`. The stream ends after the
        terminal event; a resume after the end gets 204, which stops EventSource retrying.
        """
        generation_id = checked_id(generation_id)
        if token is None and request.headers.get("authorization"):
            owner = gw.keys.user_for(request.headers.get("authorization"))
            await gw.views.status(generation_id, owner)
        else:
            try:
                owner = gw.tokens.verify(token, generation_id)
            except TokenInvalid as exc:
                log.info(
                    "SSE token rejected for generation {generation_id}: {reason}",
                    generation_id=generation_id,
                    reason=str(exc),
                )
                raise Unauthorized(str(exc)) from None
        log.info(
            "SSE token validated for generation {generation_id}",
            generation_id=generation_id,
            owner=owner,
        )
        header = request.headers.get("last-event-id")
        after = last_event_id or 0
        if header:
            try:
                after = max(after, int(header))
            except ValueError:
                raise BadRequest(
                    "The Last-Event-ID header must be a number (an SSE id from this stream)."
                ) from None
        if after and await _ended_before(gw, generation_id, after):
            return Response(content=b"", status_code=204)
        release_stream = gw.outflow.admit()  # 503 beyond the gateway-wide caps
        try:
            release_slot = gw.stream_slots.acquire(owner)
        except BaseException:
            release_stream()
            raise

        def release() -> None:
            release_slot()
            release_stream()

        return SSEResponse(
            WatchSession(
                gw.hub,
                generation_id,
                after,
                gw.stats,
                on_close=release,
                stopping=gw.stopping,
                budget=gw.outflow,
            )
        )


async def _ended_before(gw: GatewayDep, generation_id: FromPath[str], after: int) -> bool:
    """True when the generation has ended and the client has everything up to its end."""
    last = await last_event(gw.js, generation_id)
    return last is not None and is_terminal(last.event) and after >= last.stream_seq
