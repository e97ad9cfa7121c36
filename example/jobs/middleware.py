"""Two small HTTP rules for the API, as async-capable middleware (the site runs under ASGI).

* ``HEAD`` is answered wherever ``GET`` is: django-ninja routes by method and has no ``HEAD``, so
  the API sees a ``GET`` and the body is dropped (RFC 9110: HEAD is GET without the content).
  Pages get the same from ``require_safe``.
* Errors under ``/api/`` are JSON with the ``Error`` schema whoever produced them: Django's URL
  resolver (404 for an unknown path), django-ninja (405 for a method the path does not take).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

API_PREFIX = "/api/"

Handler = Callable[[HttpRequest], Any]


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX)


def _as_get(request: HttpRequest) -> bool:
    """Turn an API ``HEAD`` into a ``GET``; ``True`` when the body must be dropped afterwards."""
    if request.method == "HEAD" and _is_api(request):
        request.method = "GET"
        return True
    return False


def _with_head(allow: str) -> str:
    methods = [m.strip() for m in allow.split(",") if m.strip()]
    if "GET" in methods and "HEAD" not in methods:
        methods.insert(methods.index("GET") + 1, "HEAD")
    return ", ".join(methods)


def _error_message(request: HttpRequest, response: HttpResponseBase) -> str:
    status = response.status_code
    if status == 404:
        return f"nothing at {request.path_info[:200]}: see {API_PREFIX}docs/"
    if status == 405:
        allowed = _with_head(response.get("Allow", ""))
        return f"{request.method} is not allowed on {request.path_info[:200]}; allowed: {allowed}"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _finish(request: HttpRequest, response: HttpResponseBase, head: bool) -> HttpResponseBase:
    if _is_api(request) and response.status_code >= 400 and "json" not in response.get("Content-Type", ""):
        replaced = JsonResponse({"error": _error_message(request, response)}, status=response.status_code)
        if "Allow" in response:
            replaced["Allow"] = _with_head(response["Allow"])
        response = replaced
    if head and not response.streaming:
        length = len(response.content)  # type: ignore[attr-defined]
        response.content = b""  # type: ignore[attr-defined]
        response["Content-Length"] = str(length)
    return response


@sync_and_async_middleware
def api_http_rules(get_response: Handler) -> Handler:
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponseBase:
            head = _as_get(request)
            response: HttpResponseBase = await get_response(request)
            return _finish(request, response, head)

        return middleware

    def sync_middleware(request: HttpRequest) -> HttpResponseBase:
        head = _as_get(request)
        return _finish(request, get_response(request), head)

    return sync_middleware
