#!/bin/sh
# Build the celery-fleet image of a Django + Celery project that lives anywhere (docs/adopt.md, 4):
#
#   docker/build-image.sh [--app NAME] [--extras LIST] [--base IMAGE] PROJECT_DIR IMAGE_TAG [docker build options]
#
# PROJECT_DIR is the folder `celery -A NAME` runs in (manage.py, the NAME package, an optional
# requirements.txt with the project's own dependencies). --app defaults to the folder's name,
# --extras (celery-fleet extras, comma separated) to none, --base to python:3.11-slim-bookworm.
# The build context is assembled in a temporary folder: this checkout's library (pyproject.toml,
# src/, docker/) and the project under app/ (without .git, virtualenvs and caches), then built with
# docker/Dockerfile exactly as the bundled example is (APP_DIR=app).
set -eu

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

app="" extras="" base="python:3.11-slim-bookworm"
while [ "$#" -gt 0 ]; do
  case "$1" in
    --app) app="${2:?--app needs a name}"; shift 2 ;;
    --extras) extras="${2?--extras needs a list}"; shift 2 ;;
    --base) base="${2:?--base needs an image}"; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "build-image.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ "$#" -ge 2 ] || usage
project="$1" tag="$2"
shift 2
[ -d "$project" ] || { echo "build-image.sh: $project is not a folder" >&2; exit 2; }
project="$(cd "$project" && pwd)"
app="${app:-$(basename "$project")}"
if [ ! -f "$project/$app/__init__.py" ] && [ ! -f "$project/$app.py" ]; then
  echo "build-image.sh: no package or module '$app' in $project (pass --app NAME: what celery -A takes)" >&2
  exit 2
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
context="$(mktemp -d "${TMPDIR:-/tmp}/celery-fleet-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
trap 'exit 130' INT TERM
# Copies without version control, virtualenvs, caches and local databases.
copy() {
  from="$1" to="$2"
  shift 2
  tar -C "$from" -cf - \
      --exclude=.git --exclude=.venv --exclude=venv --exclude=__pycache__ --exclude='*.pyc' \
      --exclude=node_modules --exclude=.pytest_cache --exclude=.mypy_cache --exclude='*.egg-info' \
      --exclude='*.sqlite3' "$@" \
    | tar -C "$to" -xf -
}
copy "$repo" "$context" pyproject.toml README.md src docker
mkdir "$context/app"
copy "$project" "$context/app" .

docker build -f "$context/docker/Dockerfile" \
  --build-arg "BASE_IMAGE=$base" \
  --build-arg APP_DIR=app \
  --build-arg "APP_EXTRAS=$extras" \
  --build-arg "CELERY_APP=$app" \
  -t "$tag" "$@" "$context"
