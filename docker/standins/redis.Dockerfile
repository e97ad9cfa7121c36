# Test stand-in for the official `redis` image (no registry here): Debian's redis-server on the
# locally made base. Same contract: port 6379, data in /data, AOF, password from REDIS_PASSWORD,
# and the same user: uid/gid 999 (what the chart's securityContext runs it as).
ARG SERVICES_IMAGE=celery-fleet-services:bookworm
FROM ${SERVICES_IMAGE}
RUN groupmod -g 999 redis && usermod -u 999 -g 999 redis \
 && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
EXPOSE 6379
CMD ["sh", "-c", "exec redis-server --bind 0.0.0.0 --protected-mode no --dir /data --appendonly yes --save '' --requirepass \"$REDIS_PASSWORD\""]
