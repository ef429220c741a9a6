"""The api phase: a Litestar controller per entity, the shared helpers and the app."""

from __future__ import annotations

from services.orchestrator.providers.offline.layout import EntityLayout, ProjectLayout
from services.orchestrator.providers.offline.templates.common import Imports, py
from services.orchestrator.providers.offline.templates.pyformat import INDENT, bracket, fits

CRUD_MODULE = '''"""Helpers every controller shares: load a row or answer 404, check references."""

from __future__ import annotations

from typing import Any, TypeVar

from litestar.exceptions import NotFoundException, ValidationException
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Base

ModelT = TypeVar("ModelT", bound=Base)

# A database integer has 64 bits: an id outside them names no row.
MIN_ID, MAX_ID = -(2**63), 2**63 - 1


async def get_or_404(session: AsyncSession, model: type[ModelT], item_id: int) -> ModelT:
    """The row of `model` with `item_id`, or 404 Not Found."""
    item = await session.get(model, item_id) if MIN_ID <= item_id <= MAX_ID else None
    if item is None:
        raise NotFoundException(f"no {model.__name__} with id {item_id}")
    return item


async def check_refs(
    session: AsyncSession, values: dict[str, Any], refs: dict[str, type[Base]]
) -> None:
    """400 Bad Request when a foreign key in `values` names a row that does not exist."""
    for column, model in refs.items():
        target_id = values.get(column)
        if target_id is not None and await session.get(model, target_id) is None:
            raise ValidationException(f"{column}: no {model.__name__} with id {target_id}")


async def load_targets(
    session: AsyncSession, model: type[ModelT], ids: list[int], member: str
) -> list[ModelT]:
    """The rows of `model` with `ids` (in id order), or 400 naming the ids that do not exist."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    rows = list(await session.scalars(select(model).where(model.id.in_(wanted))))  # type: ignore[attr-defined]
    missing = sorted(set(wanted) - {row.id for row in rows})  # type: ignore[attr-defined]
    if missing:
        listed = ", ".join(str(i) for i in missing)
        raise ValidationException(f"{member}: no {model.__name__} with id {listed}")
    return sorted(rows, key=lambda row: row.id)  # type: ignore[attr-defined]
'''

PAGINATION_MODULE = '''"""Limit and offset of the list routes."""

from __future__ import annotations

from typing import Annotated

from litestar.params import QueryParameter

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

Limit = Annotated[
    int, QueryParameter(ge=1, le=MAX_LIMIT, description="How many items to return at most")
]
Offset = Annotated[int, QueryParameter(ge=0, description="How many items to skip first")]
'''


# Templates revision 1: any id went to the database (one beyond 64 bits answered 500).
CRUD_MODULE_1 = CRUD_MODULE.replace(
    """
# A database integer has 64 bits: an id outside them names no row.
MIN_ID, MAX_ID = -(2**63), 2**63 - 1
""",
    "",
).replace(
    "await session.get(model, item_id) if MIN_ID <= item_id <= MAX_ID else None",
    "await session.get(model, item_id)",
)


def crud_module(project: ProjectLayout) -> str:
    """`app/crud.py`."""
    return CRUD_MODULE if project.bounded else CRUD_MODULE_1


def pagination_module() -> str:
    """`app/pagination.py` (only with the pagination feature)."""
    return PAGINATION_MODULE


def routes_package(project: ProjectLayout) -> str:
    """`app/routes/__init__.py`: the list of every controller."""
    controllers = sorted((e.module, f"{e.name}Controller") for e in project.entities)
    imports = Imports({name for _, name in controllers})
    handler = imports.name("litestar.types", "ControllerRouterHandler")
    names: list[str] = []
    if project.auth:
        names.append(imports.alias("app.auth.routes", "AuthController", "AuthController"))
    names.extend(imports.alias(f"app.routes.{m}", name, name) for m, name in controllers)
    lines = [
        '"""Every route of the API, in one list for the application."""',
        "",
        "from __future__ import annotations",
        "",
        imports.render(),
        "",
        *bracket("", f"ROUTES: list[{handler}] = ", names, brackets="[]", explode=True),
    ]
    return "\n".join(lines) + "\n"


def route_module(project: ProjectLayout, entity: EntityLayout) -> str:
    """`app/routes/<entity>.py`: create, list, read, update and delete, plus children."""
    controller = f"{entity.name}Controller"
    child_modules = sorted({project.entity(c.target).module for c in entity.children})
    taken = {controller, "REFS", *(f"{m}_schemas" for m in child_modules)}
    imports = Imports(taken)
    base = imports.name("litestar", "Controller")
    get = imports.name("litestar", "get")
    post = imports.name("litestar", "post")
    patch = imports.name("litestar", "patch")
    delete = imports.name("litestar", "delete")
    select = imports.name("sqlalchemy", "select")
    session_type = (
        f"{imports.name('litestar.di', 'NamedDependency')}"
        f"[{imports.name('sqlalchemy.ext.asyncio', 'AsyncSession')}]"
    )
    path_id = f"{imports.name('litestar.params', 'FromPath')}[int]"
    msgspec = imports.module("msgspec")
    json_body = imports.name("litestar.params", "JSONBody")
    imports.name("app", "models")
    imports.alias("app.schemas", entity.module, "schemas")
    for module in child_modules:
        imports.alias("app.schemas", module, f"{module}_schemas")
    get_or_404 = imports.name("app.crud", "get_or_404")
    guards = ""
    if project.auth:
        guards = f"guards={imports.name('app.auth.security', 'ROUTE_GUARDS')}"
    paging_args: list[str] = []
    paging_query = ""
    if project.pagination:
        limit = imports.name("app.pagination", "Limit")
        offset = imports.name("app.pagination", "Offset")
        default = imports.name("app.pagination", "DEFAULT_LIMIT")
        paging_args = [f"limit: {limit} = {default}", f"offset: {offset} = 0"]
        paging_query = ".limit(limit).offset(offset)"
    model = f"models.{entity.name}"
    read = f"schemas.{entity.name}Read"
    session = project.session
    session_arg = f"{session}: {session_type}"
    refs = [f"{py(ref.column)}: models.{ref.target}" for ref in entity.refs]
    check: list[str] = []
    if refs:
        check_refs = imports.name("app.crud", "check_refs")
        check = [f"        await {check_refs}({session}, values, REFS)"]
    load = imports.name("app.crud", "load_targets") if entity.many else ""

    load_many: list[str] = []
    for m in entity.many:
        args = [session, f"models.{m.target}", f"values[{py(m.name)}]", py(m.name)]
        load_many.extend(bracket("        ", f"values[{py(m.name)}] = await {load}", args))

    update_many: list[str] = []
    for m in entity.many:
        args = [session, f"models.{m.target}", f"values[{py(m.name)}]", py(m.name)]
        update_many.append(f"        if {py(m.name)} in values:")
        update_many.extend(bracket("            ", f"values[{py(m.name)}] = await {load}", args))

    def decorator(verb: str, route: str = "") -> str:
        args = [a for a in (py(route) if route else "", guards) if a]
        return f"    @{verb}({', '.join(args)})"

    lines = [
        f'"""The HTTP API of {entity.name}: create, list, read, update and delete."""',
        "",
        "from __future__ import annotations",
        "",
        imports.render(),
        "",
    ]
    if refs:
        lines.extend(
            [
                "# The foreign keys of a body, and the model each one must name a row of.",
                *bracket(
                    "", "REFS: dict[str, type[models.Base]] = ", refs, brackets="{}", explode=True
                ),
                "",
            ]
        )
    item_id = "/{item_id:int}"
    lines.extend(
        [
            "",
            f"class {controller}({base}):",
            f'    """The routes under `{entity.path}`."""',
            "",
            f"    path = {py(entity.path)}",
            f"    tags = [{py(entity.name)}]",
            "",
            decorator(get),
            *bracket(
                "    ", "async def index", ["self", session_arg, *paging_args], f" -> list[{read}]:"
            ),
            f'        """Every {entity.name}, in the order they were created."""',
            *_chain(
                "        ",
                f"rows = await {session}.scalars",
                f"{select}({model}).order_by({model}.id){paging_query}",
            ),
            "        return [schemas.to_read(row) for row in rows]",
            "",
            decorator(post),
            *bracket(
                "    ",
                "async def create",
                ["self", f"data: {json_body}[schemas.{entity.name}Create]", session_arg],
                f" -> {read}:",
            ),
            f'        """Create a {entity.name}."""',
            f"        values = {msgspec}.structs.asdict(data)",
            *check,
            *load_many,
            f"        item = {model}()",
            "        for key, value in values.items():",
            "            setattr(item, key, value)",
            f"        {session}.add(item)",
            f"        await {session}.commit()",
            "        return schemas.to_read(item)",
            "",
            decorator(get, item_id),
            *bracket(
                "    ",
                "async def read",
                ["self", f"item_id: {path_id}", session_arg],
                f" -> {read}:",
            ),
            f'        """One {entity.name}, or 404."""',
            *bracket(
                "        ",
                "return schemas.to_read",
                [f"await {get_or_404}({session}, {model}, item_id)"],
            ),
            "",
            decorator(patch, item_id),
            *bracket(
                "    ",
                "async def update",
                [
                    "self",
                    f"item_id: {path_id}",
                    f"data: {json_body}[schemas.{entity.name}Update]",
                    session_arg,
                ],
                f" -> {read}:",
            ),
            '        """Change the members the body sends; the others keep their values."""',
            *bracket("        ", "item = await " + get_or_404, [session, model, "item_id"]),
            "        values = {",
            "            key: value",
            f"            for key, value in {msgspec}.structs.asdict(data).items()",
            f"            if value is not {msgspec}.UNSET",
            "        }",
            *check,
            *update_many,
            "        for key, value in values.items():",
            "            setattr(item, key, value)",
            f"        await {session}.commit()",
            "        return schemas.to_read(item)",
            "",
            decorator(delete, item_id),
            *bracket(
                "    ",
                "async def remove",
                ["self", f"item_id: {path_id}", session_arg],
                " -> None:",
            ),
            f'        """Delete a {entity.name}; 409 while a required reference points at it."""',
            *bracket("        ", "item = await " + get_or_404, [session, model, "item_id"]),
            f"        await {session}.delete(item)",
            f"        await {session}.commit()",
        ]
    )
    for child in entity.children:
        target = project.entity(child.target)
        child_model = f"models.{child.target}"
        child_schemas = f"{target.module}_schemas"
        query = (
            f"{select}({child_model})"
            f".where({child_model}.{child.column} == item_id)"
            f".order_by({child_model}.id)"
        )
        lines.extend(
            [
                "",
                decorator(get, f"{item_id}/{child.name.replace('_', '-')}"),
                *bracket(
                    "    ",
                    f"async def related_{child.name}",
                    ["self", f"item_id: {path_id}", session_arg],
                    f" -> list[{child_schemas}.{child.target}Read]:",
                ),
                f'        """The {child.target} rows of this {entity.name} ({child.name})."""',
                f"        await {get_or_404}({session}, {model}, item_id)",
                *_chain("        ", f"rows = await {session}.scalars", query),
                f"        return [{child_schemas}.to_read(row) for row in rows]",
            ]
        )
    return "\n".join(lines) + "\n"


def _chain(indent: str, head: str, query: str) -> list[str]:
    """`head(query)`, where `query` is a call chain: ruff splits it one call per line."""
    lines = bracket(indent, head, [query])
    if len(lines) != 3 or fits(lines[1]) or query.count(").") < 2:
        return lines
    first, *calls = query.split(").")
    inner = indent + INDENT
    chain = [f"{inner}{first})"] + [f"{inner}.{call})" for call in calls[:-1]]
    chain.append(f"{inner}.{calls[-1]}")
    return [lines[0], *chain, lines[2]]


def main_module(project: ProjectLayout) -> str:
    """`app/main.py`: the Litestar application (its session dependency named as the route
    handlers' parameter, `ProjectLayout.session`)."""
    return MAIN_MODULE.replace(
        '{"session": Provide(provide_session)}',
        f"{{{py(project.session)}: Provide(provide_session)}}",
    )


MAIN_MODULE = '''"""The application. Run it with `uvicorn app.main:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import create_engine, create_sessions, create_tables, database_url
from app.routes import ROUTES


async def provide_session(state: State) -> AsyncIterator[AsyncSession]:
    """A database session for one request."""
    async with state.sessions() as session:
        yield session


def conflict(request: Request, exc: IntegrityError) -> Response[dict[str, object]]:
    """409 Conflict when the database refuses a change (a unique value, a reference)."""
    detail = "the change conflicts with existing data (a unique value or a reference to it)"
    return Response({"status_code": 409, "detail": detail}, status_code=409)


def create_app(url: str | None = None) -> Litestar:
    """The application on the database at `url` (default: `DATABASE_URL` or ./app.db)."""
    engine = create_engine(url or database_url())

    async def startup() -> None:
        await create_tables(engine)

    async def shutdown() -> None:
        await engine.dispose()

    return Litestar(
        route_handlers=ROUTES,
        dependencies={"session": Provide(provide_session)},
        exception_handlers={IntegrityError: conflict},
        on_startup=[startup],
        on_shutdown=[shutdown],
        state=State({"sessions": create_sessions(engine)}),
        # Litestar's default logging starts a queue-listener thread for every application
        # (one per test); the server (uvicorn) logs requests.
        logging_config=None,
    )


app = create_app()
'''
