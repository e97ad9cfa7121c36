# Test stand-in for the official `postgres` image (no registry here): Debian's PostgreSQL 15 on
# the locally made base. Same contract: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, port 5432,
# and the same user: uid/gid 999 (what the chart's securityContext runs it as).
ARG SERVICES_IMAGE=celery-fleet-services:bookworm
FROM ${SERVICES_IMAGE}
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
RUN groupmod -g 999 postgres && usermod -u 999 -g 999 postgres \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
USER postgres
EXPOSE 5432
# As the official image: SIGINT is PostgreSQL's "fast" shutdown. On SIGTERM ("smart") it waits
# for every client to disconnect, and Django keeps its connections open: a pod deletion would
# take the whole grace period.
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
