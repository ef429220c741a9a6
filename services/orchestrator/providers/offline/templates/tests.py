"""The tests phase: pytest tests that drive every route through Litestar's TestClient."""

from __future__ import annotations

from typing import Any

from services.orchestrator.providers.offline.layout import Column, EntityLayout, ProjectLayout
from services.orchestrator.providers.offline.templates.common import py
from services.orchestrator.providers.offline.templates.pyformat import (
    bracket,
    import_from,
    natural,
)

SAMPLES: dict[str, tuple[Any, Any]] = {
    "text": ("Some text.", "Other text."),
    "integer": (1, 2),
    "float": (1.5, 2.25),
    "decimal": ("12.50", "7.25"),
    "boolean": (True, False),
    "date": ("2024-01-02", "2024-03-04"),
    "datetime": ("2024-01-02T03:04:05", "2024-03-04T05:06:07"),
    "uuid": ("12345678-1234-5678-1234-567812345678", "87654321-4321-8765-4321-876543218765"),
}
# A project whose datetimes keep their UTC offset (`ProjectLayout.zoned`) is tested with
# offsets: read back from the database, they must be given back as sent.
ZONED_DATETIMES = ("2024-01-02T03:04:05+02:00", "2024-03-04T05:06:07-05:30")


def sample(column: Column, second: bool = False, *, zoned: bool = False) -> Any:
    """A valid value of `column` (a second, different one when `second`)."""
    if zoned and column.type == "datetime":
        return ZONED_DATETIMES[1 if second else 0]
    if column.type == "string":
        return f"{column.name} {'two' if second else 'one'}"
    if column.type == "enum":
        return column.values[-1] if second else column.values[0]
    return SAMPLES[column.type][1 if second else 0]


def invalid(column: Column) -> Any:
    """A value of the wrong type for `column`."""
    return 12345 if column.type in ("string", "text") else "not valid"


def literal(value: Any) -> str:
    """A Python literal for a JSON-compatible sample value."""
    return py(value)


def _dict_lines(prefix: str, value: dict[str, Any]) -> list[str]:
    """`prefix` followed by a dict literal, one item per line when it is long."""
    flat = f"{prefix}{literal(value)}"
    if len(flat) <= 100:
        return [flat]
    indent = " " * (len(prefix) - len(prefix.lstrip()) + 4)
    items = [f"{indent}{literal(k)}: {literal(v)}," for k, v in value.items()]
    return [prefix + "{", *items, indent[:-4] + "}"]


def conftest(project: ProjectLayout) -> str:
    """`tests/conftest.py`: one application for the whole run, an empty database per test.

    Building the application and creating its tables for every test cost ~0.2 s a test on
    20 entities and ~1 s on 100 (a 100-entity suite took ~17 minutes); emptying the tables
    costs a millisecond or two and gives each test the same start: no rows, ids from 1 again
    (no table uses AUTOINCREMENT), and no headers or cookies of an earlier test.
    """
    noqa = "  # noqa: E402" if project.auth else ""
    lines = [
        '"""Fixtures: one application for the whole run, and an empty database for every test.',
        "",
        "Every test starts as on a new database: no rows, ids counted from 1 again, and no",
        "headers or cookies left by an earlier test. Building the application (and its tables)",
        'once rather than for every test keeps a large project\'s suite fast."""',
        "",
        "from __future__ import annotations",
        "",
    ]
    if project.auth:
        lines.append("import os")
    lines.extend(
        [
            "import sqlite3",
            "from collections.abc import Iterator",
            "from contextlib import closing",
            "from pathlib import Path",
            "from typing import Any",
            "",
            "import pytest",
            "from litestar.testing import TestClient",
            "",
        ]
    )
    if project.auth:
        lines.extend(
            [
                "# Fast password hashes in tests; the application's default is 600,000.",
                'os.environ.setdefault("PASSWORD_HASH_ITERATIONS", "1000")',
                "",
            ]
        )
    client = "anonymous" if project.auth else "client"
    lines.extend(
        [
            f"from app.db import Base{noqa}",
            f"from app.main import create_app{noqa}",
            "",
            "",
            '@pytest.fixture(scope="session")',
            "def database(tmp_path_factory: pytest.TempPathFactory) -> Path:",
            '    """The SQLite file of the run."""',
            '    return tmp_path_factory.mktemp("database") / "test.db"',
            "",
            "",
            '@pytest.fixture(scope="session")',
            "def application(database: Path) -> Iterator[TestClient[Any]]:",
            '    """A client of the one application of the run (it creates the tables at startup)."""',
            '    with TestClient(create_app(f"sqlite+aiosqlite:///{database}")) as client:',
            "        yield client",
            "",
            "",
            '@pytest.fixture(scope="session")',
            "def tables(application: TestClient[Any], database: Path) -> Iterator[sqlite3.Connection]:",
            '    """A plain connection to the database, once the application has created its tables."""',
            "    with closing(sqlite3.connect(database, isolation_level=None)) as connection:",
            "        yield connection",
            "",
            "",
            "@pytest.fixture",
            *bracket(
                "",
                f"def {client}",
                ["application: TestClient[Any]", "tables: sqlite3.Connection"],
                " -> Iterator[TestClient[Any]]:",
            ),
            '    """The application\'s client, on an empty database and with its own headers."""',
            "    empty(tables)",
            "    headers = application.headers.copy()",
            "    yield application",
            "    application.headers = headers",
            "    application.cookies.clear()",
        ]
    )
    if project.auth:
        lines.extend(
            [
                "",
                "",
                "@pytest.fixture",
                "def client(anonymous: TestClient[Any]) -> TestClient[Any]:",
                '    """The same client, signed in: it sends a bearer token with every request."""',
                '    user = {"username": "tester", "password": "correct horse battery"}',
                '    assert anonymous.post("/auth/register", json=user).status_code == 201',
                '    response = anonymous.post("/auth/token", json=user)',
                "    assert response.status_code == 200, response.text",
                '    token = response.json()["access_token"]',
                '    anonymous.headers["Authorization"] = f"Bearer {token}"',
                "    return anonymous",
            ]
        )
    lines.extend(
        [
            "",
            "",
            "def empty(connection: sqlite3.Connection) -> None:",
            '    """Delete every row of every table, in one transaction (a plain sqlite3 connection',
            '    does not enforce foreign keys, so the order of the tables does not matter)."""',
            '    deletes = "".join(f\'DELETE FROM "{table}";\' for table in Base.metadata.tables)',
            '    connection.executescript(f"BEGIN;{deletes}COMMIT;")',
        ]
    )
    return "\n".join(lines) + "\n"


FACTORIES_PACKAGE = (
    '"""Valid request bodies and create helpers: one module per entity, each with\n'
    '`<entity>_payload` and `make_<entity>`."""\n'
)


def _client_module_head(docstring: str) -> list[str]:
    """The first lines of a generated test module that calls the app through `TestClient`."""
    return [
        f'"""{docstring}"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        "from litestar.testing import TestClient",
    ]


def factory_module(project: ProjectLayout, entity: EntityLayout) -> str:
    """`tests/factories/<entity>.py`: a valid body for the entity and a create helper.

    A body names the rows its required references point at, creating them first through
    their own factories (required references never form a cycle, see `layout`).
    """
    needed = sorted(
        {project.entity(r.target).module for r in entity.refs if r.required} - {entity.module}
    )
    body = [
        f"        {literal(c.name)}: {literal(sample(c, zoned=project.zoned))},"
        for c in entity.columns
    ]
    body.extend(
        f'        {literal(r.column)}: make_{project.entity(r.target).module}(client)["id"],'
        for r in entity.refs
        if r.required
    )
    lines = _client_module_head(
        f"A valid {entity.name} body, and a helper that creates one through the API."
    )
    if needed:
        lines.append("")
        for m in sorted(needed, key=natural):
            lines.extend(import_from(f"tests.factories.{m}", [f"make_{m}"]))
    lines.extend(
        [
            "",
            "",
            f"def {entity.module}_payload(client: TestClient[Any]) -> dict[str, Any]:",
            f'    """A valid body for `POST {entity.path}` (creating the rows it must refer to)."""',
            "    return {",
            *body,
            "    }",
            "",
            "",
            f"def make_{entity.module}(client: TestClient[Any]) -> dict[str, Any]:",
            f'    """Create a {entity.name} through the API; the JSON the API returns."""',
            f"    response = client.post({literal(entity.path)}, json={entity.module}_payload(client))",
            "    assert response.status_code == 201, response.text",
            "    created: dict[str, Any] = response.json()",
            "    return created",
        ]
    )
    return "\n".join(lines) + "\n"


def entity_tests(project: ProjectLayout, entity: EntityLayout) -> str:
    """`tests/test_<entity>.py`: every route of one entity, through HTTP."""
    path = entity.path
    module = entity.module
    helpers = {(module, f"make_{module}"), (module, f"{module}_payload")}
    changes = {c.name: sample(c, second=True, zoned=project.zoned) for c in entity.columns}
    tests: list[list[str]] = [
        [
            "def test_create_returns_what_was_sent(client: TestClient[Any]) -> None:",
            f"    payload = {module}_payload(client)",
            f"    response = client.post({literal(path)}, json=payload)",
            "    assert response.status_code == 201, response.text",
            "    created = response.json()",
            '    assert isinstance(created["id"], int)',
            "    for key, value in payload.items():",
            "        assert created[key] == value, key",
        ],
        [
            "def test_read_one(client: TestClient[Any]) -> None:",
            f"    created = make_{module}(client)",
            f"    response = client.get(f\"{path}/{{created['id']}}\")",
            "    assert response.status_code == 200, response.text",
            "    assert response.json() == created",
        ],
        [
            "def test_list_returns_every_row_in_order(client: TestClient[Any]) -> None:",
            f"    first, second = make_{module}(client), make_{module}(client)",
            f"    response = client.get({literal(path)})",
            "    assert response.status_code == 200, response.text",
            '    assert [item["id"] for item in response.json()] == [first["id"], second["id"]]',
        ],
        [
            "def test_update_changes_only_what_is_sent(client: TestClient[Any]) -> None:",
            f"    created = make_{module}(client)",
            *_dict_lines("    changes: dict[str, Any] = ", changes),
            f"    response = client.patch(f\"{path}/{{created['id']}}\", json=changes)",
            "    assert response.status_code == 200, response.text",
            "    assert response.json() == {**created, **changes}",
            f"    assert client.get(f\"{path}/{{created['id']}}\").json() == {{**created, **changes}}",
        ],
        [
            "def test_delete(client: TestClient[Any]) -> None:",
            f"    created = make_{module}(client)",
            f"    response = client.delete(f\"{path}/{{created['id']}}\")",
            "    assert response.status_code == 204, response.text",
            f"    assert client.get(f\"{path}/{{created['id']}}\").status_code == 404",
        ],
        [
            "def test_an_unknown_id_is_404(client: TestClient[Any]) -> None:",
            f"    assert client.get({literal(path + '/999999')}).status_code == 404",
            f"    assert client.patch({literal(path + '/999999')}, json={{}}).status_code == 404",
            f"    assert client.delete({literal(path + '/999999')}).status_code == 404",
        ],
        [
            "def test_an_unknown_member_is_rejected(client: TestClient[Any]) -> None:",
            f'    payload = {{**{module}_payload(client), "not_a_member": 1}}',
            f"    assert client.post({literal(path)}, json=payload).status_code == 400",
        ],
    ]
    if entity.columns:
        column = entity.columns[0]
        tests.append(
            [
                "def test_a_value_of_the_wrong_type_is_rejected(client: TestClient[Any]) -> None:",
                f"    payload = {module}_payload(client)",
                f"    payload[{literal(column.name)}] = {literal(invalid(column))}",
                f"    response = client.post({literal(path)}, json=payload)",
                "    assert response.status_code == 400, response.text",
            ]
        )
    required = [c.name for c in entity.columns if c.required]
    if required:
        tests.append(
            [
                "def test_a_missing_required_member_is_rejected(client: TestClient[Any]) -> None:",
                f"    payload = {module}_payload(client)",
                f"    del payload[{literal(required[0])}]",
                f"    assert client.post({literal(path)}, json=payload).status_code == 400",
            ]
        )
    for ref in entity.refs:
        target = project.entity(ref.target)
        tests.append(
            [
                f"def test_{ref.column}_must_name_an_existing_row(client: TestClient[Any]) -> None:",
                f"    payload = {module}_payload(client)",
                f"    payload[{literal(ref.column)}] = 999999",
                f"    response = client.post({literal(path)}, json=payload)",
                "    assert response.status_code == 400, response.text",
            ]
        )
        if not ref.required:
            helpers.add((target.module, f"make_{target.module}"))
            tests.append(
                [
                    f"def test_{ref.column}_links_a_{target.module}(client: TestClient[Any]) -> None:",
                    f"    target = make_{target.module}(client)",
                    f'    payload = {{**{module}_payload(client), {literal(ref.column)}: target["id"]}}',
                    f"    response = client.post({literal(path)}, json=payload)",
                    "    assert response.status_code == 201, response.text",
                    f'    assert response.json()[{literal(ref.column)}] == target["id"]',
                ]
            )
    for many in entity.many:
        target = project.entity(many.target)
        helpers.add((target.module, f"make_{target.module}"))
        tests.append(
            [
                f"def test_{many.name}_links_several_rows(client: TestClient[Any]) -> None:",
                f"    first, second = make_{target.module}(client), make_{target.module}(client)",
                '    ids = sorted([first["id"], second["id"]])',
                f"    payload = {{**{module}_payload(client), {literal(many.name)}: ids[::-1]}}",
                f"    response = client.post({literal(path)}, json=payload)",
                "    assert response.status_code == 201, response.text",
                "    created = response.json()",
                f"    assert created[{literal(many.name)}] == ids",
                f"    changed = client.patch(f\"{path}/{{created['id']}}\", json={{{literal(many.name)}: ids[:1]}})",
                f"    assert changed.json()[{literal(many.name)}] == ids[:1]",
                f"    wrong = {{**{module}_payload(client), {literal(many.name)}: [999999]}}",
                f"    assert client.post({literal(path)}, json=wrong).status_code == 400",
            ]
        )
    for child in entity.children:
        target = project.entity(child.target)
        helpers.add((target.module, f"{target.module}_payload"))
        route = f"{path}/{{parent['id']}}/{child.name.replace('_', '-')}"
        tests.append(
            [
                f"def test_{child.name}_lists_the_rows_pointing_here(client: TestClient[Any]) -> None:",
                f"    parent = make_{module}(client)",
                f'    assert client.get(f"{route}").json() == []',
                f'    payload = {{**{target.module}_payload(client), {literal(child.column)}: parent["id"]}}',
                f"    child = client.post({literal(target.path)}, json=payload)",
                "    assert child.status_code == 201, child.text",
                f'    response = client.get(f"{route}")',
                "    assert response.status_code == 200, response.text",
                "    assert response.json() == [child.json()]",
            ]
        )
    if project.pagination:
        tests.append(
            [
                "def test_the_list_is_paginated(client: TestClient[Any]) -> None:",
                f'    ids = [make_{module}(client)["id"] for _ in range(3)]',
                f'    page = client.get({literal(path)}, params={{"limit": 2}})',
                '    assert [item["id"] for item in page.json()] == ids[:2]',
                f'    rest = client.get({literal(path)}, params={{"limit": 2, "offset": 2}})',
                '    assert [item["id"] for item in rest.json()] == ids[2:]',
                f'    assert client.get({literal(path)}, params={{"limit": 0}}).status_code == 400',
            ]
        )
    return client_test_module(
        f"The {entity.name} API through HTTP: create, list, read, update, delete.", helpers, tests
    )


def client_test_module(
    docstring: str,
    factories: set[tuple[str, str]],
    tests: list[list[str]],
    imports: tuple[str, ...] = (),
) -> str:
    """A generated test module that calls the app through `TestClient`: its head, the
    `imports` it needs, the factory helpers it uses (module, name) and its `tests`."""
    lines = [*_client_module_head(docstring), "", *imports]
    by_module: dict[str, list[str]] = {}
    for module, helper in sorted(factories):
        by_module.setdefault(module, []).append(helper)
    for name, names in sorted(by_module.items(), key=lambda item: natural(item[0])):
        lines.extend(import_from(f"tests.factories.{name}", names))
    for test in tests:
        lines.extend(["", "", *test])
    return "\n".join(lines) + "\n"
