#!/bin/sh
# Role dispatcher of the celery-fleet image: `docker run IMAGE <role> [args...]`.
# Every role `exec`s its process, so it is PID 1 and gets the container's signals itself.
# Command lines are those of celery_fleet.roles.
set -eu
role="${1:-web}"
[ "$#" -gt 0 ] && shift

case "$role" in
  web)
    exec gunicorn --config python:celery_fleet.gunicorn_conf "${CELERY_FLEET_ASGI:?set CELERY_FLEET_ASGI}" "$@" ;;
  worker)
    # SIGTERM (docker stop, Kubernetes) -> Celery soft shutdown: drain, then requeue.
    export REMAP_SIGTERM="${REMAP_SIGTERM:-SIGQUIT}"
    case " $* " in
      *" --queues "*|*" -Q "*) ;;
      *) set -- --queues "${CELERY_FLEET_QUEUES:-$(celery-fleet queues --app "${CELERY_FLEET_APP:?}" | paste -sd,)}" "$@" ;;
    esac
    exec celery -A "${CELERY_FLEET_APP:?set CELERY_FLEET_APP}" worker --without-gossip --without-mingle "$@" ;;
  beat)
    exec celery -A "${CELERY_FLEET_APP:?set CELERY_FLEET_APP}" beat "$@" ;;
  exporter)
    exec celery-fleet exporter "$@" ;;
  migrate)
    exec python -m django migrate --no-input "$@" ;;
  manage)
    exec python -m django "$@" ;;
  probe|probe-beat|deletion-cost|timings)
    exec celery-fleet "$role" "$@" ;;
  *)
    exec "$role" "$@" ;;
esac
