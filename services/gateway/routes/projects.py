"""/projects: the caller's projects and their versions."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import Provide
from litestar.params import FromPath

from services.gateway.errors import error_responses
from services.gateway.routes.dependencies import (
    GatewayDep,
    UserDep,
    checked_id,
    current_user,
    gateway,
    require_key,
)
from services.gateway.schemas import ProjectInfo, ProjectList


class ProjectController(Controller):
    """Projects: each a tree of versions."""

    path = "/projects"
    tags = ["projects"]
    guards = [require_key]
    dependencies = {
        "gw": Provide(gateway, sync_to_thread=False),
        "user": Provide(current_user, sync_to_thread=False),
    }

    @get("/", summary="The caller's projects", responses=error_responses(401, 503))
    async def list_projects(self, gw: GatewayDep, user: UserDep) -> ProjectList:
        """Every project of the caller with its versions, newest first."""
        return await gw.views.projects(user)

    @get(
        "/{project_id:str}",
        summary="One project and its versions",
        responses=error_responses(400, 401, 404, 503),
    )
    async def get_project(
        self, project_id: FromPath[str], gw: GatewayDep, user: UserDep
    ) -> ProjectInfo:
        """The project's versions, each naming its parent (a tree)."""
        return await gw.views.project(checked_id(project_id, "project"), user)
