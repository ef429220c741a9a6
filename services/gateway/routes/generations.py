"""/generations: create, iterate, follow, inspect, download, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import Provide
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from services.gateway.auth import stream_caller
from services.gateway.commands import Requested
from services.gateway.diffs import as_patch
from services.gateway.errors import error_responses
from services.gateway.idempotency import HEADER, REPLAYED_HEADER, checked_key
from services.gateway.quotas import admit_stream
from services.gateway.requests import resume_after
from services.gateway.routes.dependencies import (
    TOKEN_AUTH,
    GatewayDep,
    KeyedController,
    UserDep,
    checked_id,
)
from services.gateway.schemas import (
    Accepted,
    AuditLog,
    CancelGeneration,
    CreateGeneration,
    FileList,
    GenerationStatus,
    IterateGeneration,
    StreamToken,
)
from services.gateway.sse import SSEResponse, WatchSession
from services.gateway.views import accepted, stream_token

LOCATION = ResponseHeader(
    name="Location",
    description="The new generation's status URL (`/generations/{generation_id}`).",
    documentation_only=True,
)


IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name=HEADER,
        required=False,
        description=(
            "Any unique string (a UUID): the same request sent again with the same key "
            "answers with the generation the first one made (`Idempotent-Replayed: true`) "
            "instead of making another; the key with another request is refused (422)."
        ),
    ),
]


def _created(gw: GatewayDep, requested: Requested) -> Response[Accepted]:
    """The 201 of a new generation (or of the one an earlier request with the same
    Idempotency-Key made), its status URL as `Location`."""
    body = accepted(requested.event, gw.tokens)
    headers = {"Location": body.status_url}
    if requested.replayed:
        headers[REPLAYED_HEADER] = "true"
    return Response(body, status_code=201, headers=headers)


class GenerationController(KeyedController):
    """Generations: each one version of a project, built phase by phase."""

    path = "/generations"
    tags = ["generations"]

    @post(
        "/",
        status_code=201,
        summary="Create a project and generate its first version",
        response_headers=[LOCATION],
        responses=error_responses(400, 401, 413, 422, 429, 503),
    )
    async def create(
        self,
        data: JSONBody[CreateGeneration],
        gw: GatewayDep,
        user: UserDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Accepted]:
        """Accepts the request, publishes it, and returns where to follow it."""
        key = checked_key(idempotency_key)
        return _created(gw, await gw.commands.create_generation(user, data, key))

    @post(
        "/iterate",
        status_code=201,
        summary="Make a new version from any completed version",
        response_headers=[LOCATION],
        responses=error_responses(400, 401, 404, 409, 413, 422, 429, 503),
    )
    async def iterate(
        self,
        data: JSONBody[IterateGeneration],
        gw: GatewayDep,
        user: UserDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Accepted]:
        """The new version starts from the parent's files; nothing of the parent changes."""
        key = checked_key(idempotency_key)
        parent, latest = await gw.views.iteration_base(
            checked_id(data.parent_generation_id, where="body.parent_generation_id"), user
        )
        requested = await gw.commands.iterate_generation(user, data, parent, latest, key)
        return _created(gw, requested)

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
        return await gw.views.file_list(checked_id(generation_id), user)

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
        entry, content = await gw.views.file(checked_id(generation_id), file_path, user)
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
        zipped, disposition = await gw.views.archive(checked_id(generation_id), user)
        return Response(
            content=zipped,
            media_type="application/zip",
            headers={"Content-Disposition": disposition},
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
        diff = await gw.views.diff(checked_id(generation_id), user)
        if format == "patch":
            return Response(content=as_patch(diff.files), media_type="text/x-diff; charset=utf-8")
        return Response(content=diff)

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
        return await gw.views.audit(checked_id(generation_id), user, verify)

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
        status = await gw.views.status(checked_id(generation_id), user)
        return stream_token(status.generation_id, user, gw.tokens)

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
        state = await gw.views.state(checked_id(generation_id), user)
        await gw.commands.cancel(state.summary, by=user, reason=data.reason if data else "")
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
        caller = stream_caller(
            gw.keys,
            gw.tokens,
            generation_id,
            token=token,
            authorization=request.headers.get("authorization"),
        )
        if caller.by_key:
            await gw.views.status(generation_id, caller.owner)  # 404 unless the key's own
        after = resume_after(request.headers.get("last-event-id"), last_event_id)
        if after and await gw.views.ended_before(generation_id, after):
            return Response(content=b"", status_code=204)
        return SSEResponse(
            WatchSession(
                gw.hub,
                generation_id,
                after,
                gw.stats,
                on_close=admit_stream(gw.outflow, gw.stream_slots, caller.owner),
                stopping=gw.stopping,
                budget=gw.outflow,
            )
        )
