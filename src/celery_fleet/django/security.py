"""HTTPS settings for a Django site behind a TLS-terminating proxy, from the environment.

``globals().update(https_settings())`` in a settings module sets what ``manage.py check --deploy``
asks for -- SSL redirect, HSTS, secure session and CSRF cookies -- from variables named like the
settings themselves (``SECURE_SSL_REDIRECT=true``, ``SECURE_HSTS_SECONDS=31536000``, ...). Unset,
each keeps Django's default (off), so a plain-HTTP development server keeps working; the Helm chart
sets them when its ingress has TLS (``django.https``).

How Django learns that a request came over HTTPS matters as much: behind gunicorn, leave
``SECURE_PROXY_SSL_HEADER`` unset and let gunicorn set the scheme from ``X-Forwarded-Proto`` only
for the proxies in ``FORWARDED_ALLOW_IPS`` (it checks the peer's address). Django's
``SECURE_PROXY_SSL_HEADER`` trusts that header from any peer, so set it (``HTTP_X_FORWARDED_PROTO,https``)
only where nothing but the proxy can reach the application and the proxy overwrites the header.

The health URLs of :mod:`celery_fleet.django.urls` are never redirected: the kubelet probes them
over plain HTTP, and a redirect would answer every probe with a 301 whatever the site's state.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

from celery_fleet.env import EnvReader, env

#: Paths (without the leading slash, as SECURE_REDIRECT_EXEMPT matches them) served over plain HTTP.
HEALTH_PATHS = (r"^healthz$", r"^readyz$")


def https_settings(reader: EnvReader = env) -> dict[str, Any]:
    """Django's HTTPS settings from the environment (``NAME`` or ``NAME_FILE``); unset: Django's defaults."""
    settings: dict[str, Any] = {
        # Redirect plain HTTP to HTTPS (security.W008).
        "SECURE_SSL_REDIRECT": reader.bool("SECURE_SSL_REDIRECT", False),
        # HTTP Strict Transport Security (security.W004, W005, W021).
        "SECURE_HSTS_SECONDS": reader.int("SECURE_HSTS_SECONDS", 0, minimum=0),
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": reader.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False),
        "SECURE_HSTS_PRELOAD": reader.bool("SECURE_HSTS_PRELOAD", False),
        # Cookies only over HTTPS (security.W012, W016).
        "SESSION_COOKIE_SECURE": reader.bool("SESSION_COOKIE_SECURE", False),
        "CSRF_COOKIE_SECURE": reader.bool("CSRF_COOKIE_SECURE", False),
        "SECURE_REDIRECT_EXEMPT": [*HEALTH_PATHS, *reader.list("SECURE_REDIRECT_EXEMPT", [])],
    }
    header = proxy_ssl_header(reader)
    if header is not None:
        settings["SECURE_PROXY_SSL_HEADER"] = header
    return settings


def proxy_ssl_header(reader: EnvReader = env) -> tuple[str, str] | None:
    """``SECURE_PROXY_SSL_HEADER`` as Django wants it, from ``HTTP_X_FORWARDED_PROTO,https``; else None."""
    parts = reader.list("SECURE_PROXY_SSL_HEADER", [])
    if not parts:
        return None
    if len(parts) != 2 or not parts[0].startswith("HTTP_") or parts[0] != parts[0].upper():
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER={','.join(parts)!r} must be 'HTTP_<HEADER>,<value>' as Django "
            "names request headers, e.g. 'HTTP_X_FORWARDED_PROTO,https'"
        )
    return parts[0], parts[1]
