# The PostgreSQL image compose.yaml names, made here without a registry: Debian's
# postgresql-PG_MAJOR (compose's major) on a local Debian base, started as the official
# image starts (the same POSTGRES_* variables, data folder and pg_isready on PATH).
# tests/docker/images.py builds it.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG PG_MAJOR
RUN mkdir -p /etc/postgresql-common \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-$PG_MAJOR \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/$PG_MAJOR/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
