"""The image is built and compose.yaml is run: Kiln's image from the repository's
Dockerfile and compose's NATS and PostgreSQL, all made here on a local Debian base (no
registry is reached), one generation through the published gateway port, its zip checked,
then `docker compose down -v` and the engine stopped (tests/docker/conftest.py)."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile

import pytest

from tests.docker.conftest import Deployment
from tests.docker.images import compose_image, image_output
from tests.support.client import connect, create, files_of, wait_status
from tests.support.waiting import eventually

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


def test_the_local_images_run_the_releases_compose_names(deployment: Deployment) -> None:
    _, nats_tag = compose_image("nats")
    _, postgres_tag = compose_image("postgres")
    engine, images = deployment.engine, deployment.images
    release = nats_tag.split("-")[0]
    assert image_output(engine, images.nats, "--version").strip() == f"nats-server: v{release}"
    postgres = image_output(engine, images.postgres, "postgres", "--version")
    major = postgres_tag.split("-")[0].split(".")[0]
    assert re.search(rf"\(PostgreSQL\) {major}\.", postgres), postgres
    assert image_output(engine, images.kiln, "--version").startswith("kiln ")


async def test_one_generation_through_the_published_port(deployment: Deployment) -> None:
    async with connect(deployment.stack.url, deployment.stack.key) as http:
        created = await create(http)
        generation = created["generation_id"]
        done = await wait_status(http, generation, timeout=180)
        assert done["status"] == "completed", done
        assert done["provider"] == "offline"

        async def verified() -> dict[str, object] | None:
            body = (await http.get(f"/generations/{generation}")).json()
            verification = body.get("verification") or {}
            return verification if verification.get("status") not in (None, "pending") else None

        # The verifier ran the project's own tests in its bubblewrap sandbox, in its container.
        verification = await eventually(verified, 180, 0.5, what="the version's verification")
        assert verification["status"] == "passed", verification

        listed = await files_of(http, generation)
        response = await http.get(f"/generations/{generation}/archive")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        digests = {name: hashlib.sha256(archive.read(name)).hexdigest() for name in names}
    assert digests == listed
    assert len(names) == done["file_count"]
    assert any(name.endswith("test_product.py") for name in names), names
    print(f"docker: steps in seconds {deployment.steps}; the zip has {len(names)} files")
