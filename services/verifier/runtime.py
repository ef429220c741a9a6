"""The verify runtime: the virtual environment every sandboxed run uses, read-only.

It holds the stack the offline provider writes and the prompts ask for (pinned in
`runtime-requirements.txt` beside this module). A project that declares a dependency
outside it cannot be verified: the check below names the first such package before
anything runs, and the sandbox never installs from the network.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REQUIREMENTS_FILE = Path(__file__).with_name("runtime-requirements.txt")
DEFAULT_RUNTIME = Path(__file__).resolve().parents[2] / ".venv-verify"
# Optional-dependency groups that a project's tests need: checked like the main ones.
TEST_GROUPS = frozenset({"dev", "test", "tests", "testing"})
_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")


class RuntimeUnavailable(RuntimeError):
    """The verify runtime is missing or broken; the message says what to do."""


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (`SQLAlchemy` == `sqlalchemy`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True, slots=True)
class Runtime:
    """A verify runtime on disk: the venv, the Python it is based on, what it holds."""

    path: Path
    base_prefix: Path
    distributions: frozenset[str]

    @property
    def python(self) -> Path:
        """The runtime's interpreter."""
        return self.path / "bin" / "python"

    @property
    def bin_dir(self) -> Path:
        """Where the runtime's scripts (ruff, pytest) are."""
        return self.path / "bin"

    def missing(self, files: dict[str, str]) -> list[str]:
        """The project's declared dependencies that the runtime does not hold, in order."""
        return [name for name in declared_dependencies(files) if normalize(name) not in self]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize(name) in self.distributions


def load_runtime(path: str | Path | None = None) -> Runtime:
    """The runtime at `path` (default `.venv-verify` beside Kiln); RuntimeUnavailable if absent."""
    root = Path(path) if path else DEFAULT_RUNTIME
    config = root / "pyvenv.cfg"
    if not config.is_file() or not (root / "bin" / "python").exists():
        raise RuntimeUnavailable(
            f"no verify runtime at {root}: run ./kiln (it creates .venv-verify) or set "
            "KILN_VERIFY_RUNTIME to a virtual environment made from "
            "services/verifier/runtime-requirements.txt"
        )
    home = _pyvenv_home(config.read_text())
    if home is None:
        raise RuntimeUnavailable(f"{config} names no `home` (the Python it is based on)")
    base_prefix = Path(home).resolve().parent if Path(home).name == "bin" else Path(home)
    site_packages = sorted((root / "lib").glob("python3*/site-packages"))
    names = {
        normalize(dist.metadata["Name"])
        for dist in metadata.distributions(path=[str(p) for p in site_packages])
        if dist.metadata["Name"]
    }
    if "pytest" not in names or "ruff" not in names:
        raise RuntimeUnavailable(
            f"the verify runtime at {root} has no pytest or ruff: recreate it from "
            "services/verifier/runtime-requirements.txt"
        )
    return Runtime(path=root.absolute(), base_prefix=base_prefix, distributions=frozenset(names))


def _pyvenv_home(text: str) -> str | None:
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home":
            return value.strip()
    return None


def declared_dependencies(files: dict[str, str]) -> list[str]:
    """Distribution names a project declares: pyproject's `[project].dependencies` and its
    test groups of optional dependencies, and every `requirements*.txt` at the top."""
    names: list[str] = []
    pyproject = files.get("pyproject.toml")
    if pyproject is not None:
        names += _pyproject_dependencies(pyproject)
    for path in sorted(files):
        if "/" not in path and re.fullmatch(r"requirements[\w.-]*\.txt", path):
            names += _requirements(files[path])
    own = _project_name(pyproject) if pyproject else None
    seen: set[str] = set()
    unique = []
    for name in names:
        key = normalize(name)
        if key not in seen and key != own:
            seen.add(key)
            unique.append(name)
    return unique


def _pyproject_dependencies(text: str) -> list[str]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return []  # the tests will say what is wrong with it
    project = document.get("project")
    if not isinstance(project, dict):
        return []
    requirements = list(_strings(project.get("dependencies")))
    optional = project.get("optional-dependencies")
    if isinstance(optional, dict):
        for group, items in optional.items():
            if group in TEST_GROUPS:
                requirements += _strings(items)
    return [name for r in requirements if (name := requirement_name(r))]


def _project_name(text: str) -> str | None:
    try:
        name = tomllib.loads(text).get("project", {}).get("name")
    except (tomllib.TOMLDecodeError, AttributeError):
        return None
    return normalize(name) if isinstance(name, str) else None


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _requirements(text: str) -> list[str]:
    names = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")) or "://" in line:
            continue
        if name := requirement_name(line):
            names.append(name)
    return names


def requirement_name(requirement: str) -> str | None:
    """The distribution name of a PEP 508 requirement (`sqlalchemy[asyncio]>=2` → sqlalchemy);
    None for one whose marker asks for an extra (it is not needed to run the tests)."""
    if ";" in requirement and "extra" in requirement.split(";", 1)[1]:
        return None
    match = _NAME.match(requirement)
    return match.group(1) if match else None
