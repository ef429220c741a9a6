"""Build the whole project a spec describes: every file, with the phase that writes it."""

from __future__ import annotations

from functools import lru_cache

from services.orchestrator.providers.offline.formatting import format_overlong
from services.orchestrator.providers.offline.layout import layout
from services.orchestrator.providers.offline.spec import (
    SPEC_PATH,
    ProjectSpec,
    dump_spec,
    load_spec,
)
from services.orchestrator.providers.offline.templates import (
    api,
    auth,
    docs,
    edge_tests,
    models,
    schemas,
    tests,
)
from services.orchestrator.providers.offline.templates.skeleton import skeleton_files

Build = dict[str, tuple[str, str]]
"""path → (phase, content)."""


def build_project(spec: ProjectSpec) -> Build:
    """Every file of the project `spec` describes, with the phase that writes it.

    Deterministic: the same spec always gives the same files, byte for byte. The spec
    must be valid (`spec_problems` empty). Files with names too long for the templates'
    layout are formatted by ruff (formatting.py).
    """
    project = layout(spec)
    files: Build = {SPEC_PATH: ("plan", dump_spec(spec))}
    for path, content in skeleton_files(project).items():
        files[path] = ("plan", content)

    files["app/db.py"] = ("models", models.db_module(project))
    files["app/models/__init__.py"] = ("models", models.models_package(project))
    files["app/schemas/__init__.py"] = ("schemas", schemas.schemas_package(project))
    files["app/routes/__init__.py"] = ("api", api.routes_package(project))
    files["app/crud.py"] = ("api", api.crud_module(project))
    files["app/main.py"] = ("api", api.main_module(project))
    if project.pagination:
        files["app/pagination.py"] = ("api", api.pagination_module())
    files["tests/__init__.py"] = ("tests", '"""The tests of the application."""\n')
    files["tests/conftest.py"] = ("tests", tests.conftest(project))
    files["tests/factories/__init__.py"] = ("tests", tests.FACTORIES_PACKAGE)
    for entity in project.entities:
        module = entity.module
        files[f"app/models/{module}.py"] = ("models", models.model_module(project, entity))
        files[f"app/schemas/{module}.py"] = ("schemas", schemas.schema_module(project, entity))
        files[f"app/routes/{module}.py"] = ("api", api.route_module(project, entity))
        files[f"tests/factories/{module}.py"] = ("tests", tests.factory_module(project, entity))
        files[f"tests/test_{module}.py"] = ("tests", tests.entity_tests(project, entity))
    if project.auth:
        files.update(auth.auth_files(project))
        files["tests/auth/__init__.py"] = ("tests", '"""The tests of authentication."""\n')
        files["tests/auth/test_auth.py"] = ("tests", auth.tests_module(project))
    if project.edge_cases:
        package = edge_tests.PACKAGE
        files[f"{package}/__init__.py"] = ("tests", edge_tests.package_module())
        files[f"{package}/conftest.py"] = ("tests", edge_tests.conftest(project))
        files[f"{package}/helpers.py"] = ("tests", edge_tests.helpers_module())
        for entity in project.entities:
            files[f"{package}/test_{entity.module}.py"] = (
                "tests",
                edge_tests.entity_module(project, entity),
            )
    files["README.md"] = ("docs", docs.readme(project))
    files["docs/api.md"] = ("docs", docs.api_doc(project))
    contents = format_overlong(
        {path: content for path, (_, content) in files.items()}, files["pyproject.toml"][1]
    )
    return {path: (files[path][0], contents[path]) for path in sorted(files)}


def phase_files(build: Build, phase: str) -> dict[str, str]:
    """The files of `build` that `phase` writes: path → content."""
    return {path: content for path, (owner, content) in build.items() if owner == phase}


@lru_cache(maxsize=16)
def cached_build(spec_json: str) -> Build:
    """`build_project` of the spec in a canonical kiln.json text, remembered.

    A generation asks for the same build once per phase; the result must not be changed.
    """
    return build_project(load_spec(spec_json))
