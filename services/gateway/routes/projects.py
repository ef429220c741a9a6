"""/projects: the caller's projects and their versions."""

from __future__ import annotations

from litestar import get
from litestar.params import FromPath

from services.gateway.errors import error_responses
from services.gateway.routes.dependencies import (
    GatewayDep,
    KeyedController,
    UserDep,
    checked_id,
)
from services.gateway.schemas import ProjectInfo, ProjectList


class ProjectController(KeyedController):
    """Projects: each a tree of versions."""

    path = "/projects"
    tags = ["projects"]

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
