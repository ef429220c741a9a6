# syntax=docker/dockerfile:1
# One image for every Kiln service: `kiln orchestrator`, `kiln storage`, `kiln verifier`, `kiln gateway`,
# `kiln migrate` (see compose.yaml), or `kiln up` for everything in one container.

# The base of both stages: the public Python image, or any Debian bookworm root filesystem
# (`--build-arg BASE_IMAGE=…`: one without Python gets Debian's python3, 3.11 as well;
# tests/docker builds Kiln on one made with debootstrap).
ARG BASE_IMAGE=python:3.11-slim

# --- build: install Kiln and its pinned dependencies into a virtual environment
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN command -v python3 >/dev/null || { apt-get update \
      && apt-get install -y --no-install-recommends python3-venv \
      && rm -rf /var/lib/apt/lists/*; }
RUN python3 -m venv /opt/kiln
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY contracts ./contracts
COPY services ./services
RUN /opt/kiln/bin/pip install --constraint constraints.txt ".[gemini,postgres]" \
    && /opt/kiln/bin/kiln settings >/dev/null
# The verify runtime: what a generated project's tests run with, in the verifier's sandbox.
RUN python3 -m venv /opt/kiln-verify \
    && /opt/kiln-verify/bin/pip install --requirement services/verifier/runtime-requirements.txt

# --- runtime: the virtual environment only, run as an unprivileged user
FROM ${BASE_IMAGE} AS runtime
# bubblewrap: the verifier's sandbox (setpriv comes with util-linux).
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
      $(command -v python3 >/dev/null || echo python3) \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 kiln \
    && useradd --system --uid 10001 --gid kiln --home-dir /var/lib/kiln --create-home kiln
COPY --from=build /opt/kiln /opt/kiln
COPY --from=build /opt/kiln-verify /opt/kiln-verify
ENV PATH=/opt/kiln/bin:$PATH \
    KILN_VERIFY_RUNTIME=/opt/kiln-verify \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KILN_DATA_DIR=/var/lib/kiln \
    KILN_HOST=0.0.0.0
WORKDIR /var/lib/kiln
USER kiln:kiln
EXPOSE 8000 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["kiln"]
CMD ["up"]
