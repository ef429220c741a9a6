"""The edge-case tests an "add tests" iteration writes: `tests/edge_cases/`.

They complete the per-entity suite (`tests.py`) without repeating it: for every field,
the values at its edges that the app must accept and give back as sent, and the values
of a wrong type or out of range that it must refuse with 400, on create and on update;
404 for every id that names no row; bodies that are not objects; and, for every
reference, the checks on update and what deleting the referenced row does.

The edge cases share one application of their own for the run (a session-scoped client,
`conftest.py` here): the tests create their own rows and never count them, so they need no
empty database each; and the fixture needs nothing from the project's own conftest, whose
`client` in a project an earlier Kiln generated builds an application for every test.
"""

from __future__ import annotations

from services.orchestrator.providers.offline.layout import Column, EntityLayout, ProjectLayout
from services.orchestrator.providers.offline.templates.common import py
from services.orchestrator.providers.offline.templates.pyformat import bracket, import_from
from services.orchestrator.providers.offline.templates.tests import client_test_module

PACKAGE = "tests/edge_cases"
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
MISSING_IDS = ("0", "-1", "999999")

# Per field type, as Python source: values the app accepts, each with what it gives back
# (None: the same), and values it refuses. Long values are expressions ("x" * 255), so no
# line of a generated module grows with them.
_ACCEPTED: dict[str, list[tuple[str, str | None]]] = {
    "string": [('""', None), ('"x" * 255', None), ('"é" * 255', None), ('"  spaced  "', None)],
    "text": [('""', None), ('"long text " * 1000', None), ('"ünïcødé ✓ 🎉"', None)],
    "integer": [("0", None), ("-1", None), (str(INT64_MAX), None), (str(INT64_MIN), None)],
    "float": [("0.0", None), ("-2.5", None), ("1e300", None), ("3", "3.0")],
    "decimal": [
        ('"0"', None),
        ('"-3.75"', None),
        ('"12345678901234567890.123456789"', None),
        ('"0.000001"', None),
    ],
    "boolean": [("True", None), ("False", None)],
    "date": [('"2024-02-29"', None), ('"0001-01-01"', None), ('"9999-12-31"', None)],
    "datetime": [
        ('"2024-02-29T23:59:59"', None),
        ('"2024-01-02T03:04:05.123456"', None),
        ('"0001-01-01T00:00:00"', None),
    ],
    "uuid": [
        ('"ABCDEF01-2345-6789-ABCD-EF0123456789"', '"abcdef01-2345-6789-abcd-ef0123456789"'),
        ('"00000000-0000-0000-0000-000000000000"', None),
    ],
}
# Datetimes with a UTC offset, which a `zoned` project (see `layout`) gives back as sent
# (UTC itself as `Z`, the way the app writes it).
_ZONED: list[tuple[str, str | None]] = [
    ('"2024-01-02T03:04:05+02:00"', None),
    ('"2024-06-30T23:59:59.999999-09:30"', None),
    ('"2024-01-02T03:04:05+00:00"', '"2024-01-02T03:04:05Z"'),
    ('"2024-01-02T03:04:05Z"', None),
    ('"9999-12-31T23:59:59+14:00"', None),
]
_BEYOND_64_BITS = frozenset({str(INT64_MAX + 1), str(INT64_MIN - 1)})
_REFUSED: dict[str, list[str]] = {
    "string": ['"x" * 256', "12345", '["a list"]'],
    "text": ["12345", '{"an": "object"}'],
    "integer": [str(INT64_MAX + 1), str(INT64_MIN - 1), "1.5", "True", '"many"'],
    "float": ["True", '"not a number"', "[1.5]"],
    "decimal": ['"not a number"', "True", "[1]"],
    "boolean": ['"maybe"', "2", "[True]"],
    "date": ['"2023-02-29"', '"2024-13-01"', '"2024-01-02T03:04:05"', "20240102"],
    "datetime": ['"2024-01-02"', '"2024-01-02T25:00:00"', '"yesterday"', "[2024]"],
    "uuid": ['"not-a-uuid"', '"12345678-1234-5678-1234-56781234567"', "12345"],
    "enum": ["12345", "True"],
}


def _edges(column: Column, project: ProjectLayout) -> tuple[list[tuple[str, str]], list[str]]:
    """The accepted (sent, given back) pairs and the refused values of a column, as code.

    Integers beyond 64 bits are refused only by a `bounded` project, and datetimes with a
    UTC offset are given back as sent only by a `zoned` one (see `layout`)."""
    if column.type == "enum":
        accepted: list[tuple[str, str | None]] = [(py(value), None) for value in column.values]
    else:
        accepted = list(_ACCEPTED[column.type])
    if column.type == "datetime" and project.zoned:
        accepted += _ZONED
    bounded = project.bounded
    refused = [v for v in _REFUSED[column.type] if bounded or v not in _BEYOND_64_BITS]
    if column.type == "enum":
        refused.insert(0, py(_not_a_value(column.values)))
    if column.required:
        refused.append("None")
    return [(sent, sent if back is None else back) for sent, back in accepted], refused


def _not_a_value(values: tuple[str, ...]) -> str:
    """A string that is none of an enum's values (its first value in other case, if new)."""
    for candidate in (values[0].upper(), values[0].lower(), f"not {values[0]}"):
        if candidate not in values:
            return candidate
    return "-".join(values) + "!"


def package_module() -> str:
    """`tests/edge_cases/__init__.py`."""
    return (
        '"""Edge cases of every entity: field limits, wrong types, missing rows, references."""\n'
    )


def conftest(project: ProjectLayout) -> str:
    """`tests/edge_cases/conftest.py`: one application for every edge case, signed in with auth."""
    lines = [
        '"""One application for every edge case: they create their own rows and never count',
        'them, so they share a database (and stay fast on a large project)."""',
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import Iterator",
        "from typing import Any",
        "",
        "import pytest",
        "from litestar.testing import TestClient",
        "",
        "from app.main import create_app",
        "",
        "",
        '@pytest.fixture(scope="session")',
        "def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Any]]:",
        '    """A client of an application on a new SQLite file, shared by every edge case."""',
        '    database = tmp_path_factory.mktemp("edge_cases") / "test.db"',
        '    with TestClient(create_app(f"sqlite+aiosqlite:///{database}")) as shared:',
    ]
    if project.auth:
        lines.extend(
            [
                '        user = {"username": "edge-tester", "password": "correct horse battery"}',
                '        assert shared.post("/auth/register", json=user).status_code == 201',
                '        response = shared.post("/auth/token", json=user)',
                "        assert response.status_code == 200, response.text",
                '        token = response.json()["access_token"]',
                '        shared.headers["Authorization"] = f"Bearer {token}"',
            ]
        )
    lines.append("        yield shared")
    return "\n".join(lines) + "\n"


HELPERS = '''"""What every edge-case test does: create and read back, or be refused."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient


def created(client: TestClient[Any], path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST `payload` to `path` (201), then GET the new row: it is what the POST returned."""
    response = client.post(path, json=payload)
    assert response.status_code == 201, f"{payload!r}: {response.text}"
    row: dict[str, Any] = response.json()
    read = client.get(f"{path}/{row['id']}")
    assert read.status_code == 200, read.text
    assert read.json() == row
    return row


def refused(client: TestClient[Any], method: str, path: str, body: Any, status: int = 400) -> None:
    """`method path` with the JSON `body` is answered with `status` (400: invalid)."""
    response = client.request(method, path, json=body)
    assert response.status_code == status, f"{method} {path} {body!r}: {response.text}"
'''


def helpers_module() -> str:
    """`tests/edge_cases/helpers.py`."""
    return HELPERS


def entity_module(project: ProjectLayout, entity: EntityLayout) -> str:
    """`tests/edge_cases/test_<entity>.py`: the edge cases of one entity."""
    module, path = entity.module, entity.path
    helpers = {(module, f"make_{module}"), (module, f"{module}_payload")}
    tests: list[list[str]] = []
    for column in entity.columns:
        tests.extend(_column_tests(project, entity, column))
    beyond = [str(INT64_MAX + 1)] if project.bounded else []
    tests.append(_missing_ids_test(entity, beyond))
    tests.append(_bodies_test(entity))
    for ref in entity.refs:
        target = project.entity(ref.target)
        helpers.add((target.module, f"make_{target.module}"))
        name, member = ref.column, py(ref.column)
        update = [
            f"def test_{name}_is_checked_on_update(client: TestClient[Any]) -> None:",
            f"    row = make_{module}(client)",
            f"    url = f\"{path}/{{row['id']}}\"",
            f"    for wrong in [{', '.join(['999999', '0', *beyond])}, "
            f'{"None, " if ref.required else ""}"not an id"]:',
            f'        refused(client, "PATCH", url, {{{member}: wrong}})',
            "    assert client.get(url).json() == row",
            f"    target = make_{target.module}(client)",
            f'    changed = client.patch(url, json={{{member}: target["id"]}})',
            "    assert changed.status_code == 200, changed.text",
            f'    assert changed.json()[{member}] == target["id"]',
        ]
        if not ref.required:
            update.extend(
                [
                    f"    unlinked = client.patch(url, json={{{member}: None}})",
                    f"    assert unlinked.status_code == 200 and unlinked.json()[{member}] is None",
                ]
            )
        tests.append(update)
        delete = [
            f"def test_deleting_the_{target.module}_of_{name}(client: TestClient[Any]) -> None:",
            f"    target = make_{target.module}(client)",
            f'    row = created(client, {py(path)}, {{**{module}_payload(client), {member}: target["id"]}})',
            f"    gone = client.delete(f\"{target.path}/{{target['id']}}\")",
        ]
        if ref.required:
            delete.extend(
                [
                    "    assert gone.status_code == 409, gone.text",
                    f"    assert client.get(f\"{path}/{{row['id']}}\").json() == row",
                ]
            )
        else:
            delete.extend(
                [
                    "    assert gone.status_code == 204, gone.text",
                    f"    assert client.get(f\"{path}/{{row['id']}}\").json()[{member}] is None",
                ]
            )
        if target.name != entity.name or not ref.required:
            tests.append(delete)
        if ref.unique:
            tests.append(
                [
                    f"def test_{name}_links_one_row_only(client: TestClient[Any]) -> None:",
                    f"    target = make_{target.module}(client)",
                    f'    payload = {{**{module}_payload(client), {member}: target["id"]}}',
                    f"    created(client, {py(path)}, payload)",
                    f'    again = {{**{module}_payload(client), {member}: target["id"]}}',
                    f'    refused(client, "POST", {py(path)}, again, status=409)',
                ]
            )
    for many in entity.many:
        target = project.entity(many.target)
        helpers.add((target.module, f"make_{target.module}"))
        member = py(many.name)
        tests.append(
            [
                f"def test_{many.name}_edge_cases(client: TestClient[Any]) -> None:",
                f'    first, second = make_{target.module}(client)["id"], make_{target.module}(client)["id"]',
                f"    payload = {{**{module}_payload(client), {member}: [second, first, second]}}",
                f"    row = created(client, {py(path)}, payload)",
                f"    assert row[{member}] == sorted([first, second])",
                f"    url = f\"{path}/{{row['id']}}\"",
                f"    for wrong in [[first, 999999], {''.join(f'[{b}], ' for b in beyond)}"
                '["x"], first, None]:',
                f'        refused(client, "PATCH", url, {{{member}: wrong}})',
                f'        refused(client, "POST", {py(path)}, {{**{module}_payload(client), {member}: wrong}})',
                "    assert client.get(url).json() == row",
                f'    gone = client.delete(f"{target.path}/{{first}}")',
                "    assert gone.status_code == 204, gone.text",
                f"    assert client.get(url).json()[{member}] == [second]",
                f"    emptied = client.patch(url, json={{{member}: []}})",
                f"    assert emptied.status_code == 200 and emptied.json()[{member}] == []",
            ]
        )
    return client_test_module(
        f"Edge cases of the {entity.name} API: field limits, wrong types, missing rows and\n"
        "references.",
        helpers,
        tests,
        imports=tuple(import_from("tests.edge_cases.helpers", ["created", "refused"])),
    )


def _column_tests(project: ProjectLayout, entity: EntityLayout, column: Column) -> list[list[str]]:
    """Two tests of a field: the values it takes at its edges, and the ones it refuses."""
    module, path, name, member = entity.module, entity.path, column.name, py(column.name)
    accepted, refused = _edges(column, project)
    takes = [
        f"def test_{name}_takes_the_values_at_its_edges(client: TestClient[Any]) -> None:",
        *bracket(
            "    ",
            "for sent, given_back in ",
            [f"({sent}, {back})" for sent, back in accepted],
            ":",
            brackets="[]",
            explode=True,
        ),
        *bracket(
            "        ",
            "row = created",
            ["client", py(path), f"{{**{module}_payload(client), {member}: sent}}"],
        ),
        f"        assert row[{member}] == given_back, sent",
        f"    row = make_{module}(client)",
        *bracket(
            "    ",
            "changed = client.patch",
            [f"f\"{path}/{{row['id']}}\"", f"json={{{member}: {accepted[-1][0]}}}"],
        ),
        "    assert changed.status_code == 200, changed.text",
        f"    assert changed.json() == {{**row, {member}: {accepted[-1][1]}}}",
    ]
    if not column.required:
        takes.extend(
            [
                f"    body = {module}_payload(client)",
                f"    del body[{member}]",
                # One call per statement: ruff lays out `assert f(...)[key] is None` in
                # parentheses once it is too long, which `bracket` does not write.
                *bracket("    ", "row = created", ["client", py(path), "body"]),
                f"    assert row[{member}] is None",
                *bracket(
                    "    ", "row = created", ["client", py(path), f"{{**body, {member}: None}}"]
                ),
                f"    assert row[{member}] is None",
            ]
        )
    refuses = [
        f"def test_{name}_refuses_wrong_values(client: TestClient[Any]) -> None:",
        f"    row = make_{module}(client)",
        f"    url = f\"{path}/{{row['id']}}\"",
        *bracket("    ", "for wrong in ", refused, ":", brackets="[]", explode=True),
        *bracket(
            "        ",
            "refused",
            ["client", '"POST"', py(path), f"{{**{module}_payload(client), {member}: wrong}}"],
        ),
        f'        refused(client, "PATCH", url, {{{member}: wrong}})',
        "    assert client.get(url).json() == row",
    ]
    if column.required:
        refuses.extend(
            [
                f"    body = {module}_payload(client)",
                f"    del body[{member}]",
                f'    refused(client, "POST", {py(path)}, body)',
            ]
        )
    if name == project.session:
        # Litestar answers an invalid value of a body member named like one of the handler's
        # dependencies with 500 rather than 400 (it takes the error for the dependency's):
        # a gap of the app before templates revision 3, which names its session dependency
        # `_session`, a name no member can have. Such a member is tested for what it takes.
        return [takes]
    return [takes, refuses]


def _missing_ids_test(entity: EntityLayout, beyond: list[str]) -> list[str]:
    """404 on read, update and delete of every id that names no row, a deleted one too
    (and, `beyond`, ids too large for the database)."""
    path = entity.path
    lines = [
        "def test_an_id_that_names_no_row_is_404(client: TestClient[Any]) -> None:",
        f'    deleted = make_{entity.module}(client)["id"]',
        f'    assert client.delete(f"{path}/{{deleted}}").status_code == 204',
        f"    for missing in [{', '.join([*MISSING_IDS, *beyond])}, deleted]:",
        f'        url = f"{path}/{{missing}}"',
        "        assert client.get(url).status_code == 404, url",
        '        refused(client, "PATCH", url, {}, status=404)',
        "        assert client.delete(url).status_code == 404, url",
    ]
    for child in entity.children:
        lines.append(
            f'        assert client.get(f"{{url}}/{child.name.replace("_", "-")}").status_code == 404'
        )
    lines.append(f"    assert client.get({py(path + '/not-an-id')}).status_code == 404")
    return lines


def _bodies_test(entity: EntityLayout) -> list[str]:
    """Bodies that are not objects, the id in an update, and an empty update."""
    path, module = entity.path, entity.module
    required = any(c.required for c in entity.columns) or any(r.required for r in entity.refs)
    lines = [
        "def test_a_body_that_is_not_an_object_is_refused(client: TestClient[Any]) -> None:",
        f"    row = make_{module}(client)",
        f"    url = f\"{path}/{{row['id']}}\"",
        '    for body in [[], "text", 1, None]:',
        f'        refused(client, "POST", {py(path)}, body)',
        '        refused(client, "PATCH", url, body)',
        '    refused(client, "PATCH", url, {"id": row["id"] + 1})',
    ]
    if required:
        lines.append(f'    refused(client, "POST", {py(path)}, {{}})')
    lines.extend(
        [
            "    unchanged = client.patch(url, json={})",
            "    assert unchanged.status_code == 200 and unchanged.json() == row",
            "    broken = client.post(",
            f'        {py(path)}, content=b\'{{"not json\', headers={{"content-type": "application/json"}}',
            "    )",
            "    assert broken.status_code == 400, broken.text",
        ]
    )
    return lines
