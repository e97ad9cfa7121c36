# Test stand-in for the official `postgres` image (no registry here): Debian's PostgreSQL 15 on
# the locally made base. Same contract: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, port 5432.
ARG SERVICES_IMAGE=celery-fleet-services:bookworm
FROM ${SERVICES_IMAGE}
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
RUN mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
