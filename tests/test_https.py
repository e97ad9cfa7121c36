"""HTTPS behind a TLS-terminating proxy: ``celery_fleet.django.security.https_settings`` (pure logic),
then real gunicorn serving the example with the chart's HTTPS environment: a client reaching the pod
directly cannot claim HTTPS with ``X-Forwarded-Proto`` (gunicorn trusts only FORWARDED_ALLOW_IPS),
the trusted proxy can, and the kubelet's plain-HTTP probes are never redirected."""

from __future__ import annotations

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured

from celery_fleet.django.security import HEALTH_PATHS, https_settings
from celery_fleet.env import EnvReader
from tests.support.fleet import Fleet

#: What the chart puts in the ConfigMap when django.https is on (templates/common/configmap.yaml).
CHART_HTTPS = {
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
}
#: The proxy's address in the test: loopback has all of 127/8, so a client can come from another one.
PROXY = "127.0.0.2"


def test_unset_means_django_defaults_so_plain_http_development_works() -> None:
    assert https_settings(EnvReader({})) == {
        "SECURE_SSL_REDIRECT": False,
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_REDIRECT_EXEMPT": list(HEALTH_PATHS),
    }


def test_the_chart_environment_turns_everything_on_and_exempts_the_probes() -> None:
    settings = https_settings(EnvReader({**CHART_HTTPS, "SECURE_REDIRECT_EXEMPT": "^metrics$"}))
    assert settings["SECURE_SSL_REDIRECT"] is True
    assert settings["SECURE_HSTS_SECONDS"] == 31536000
    assert settings["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert settings["SECURE_HSTS_PRELOAD"] is True
    assert settings["SESSION_COOKIE_SECURE"] is True
    assert settings["CSRF_COOKIE_SECURE"] is True
    assert settings["SECURE_REDIRECT_EXEMPT"] == ["^healthz$", "^readyz$", "^metrics$"]
    assert "SECURE_PROXY_SSL_HEADER" not in settings  # gunicorn decides the scheme (see the module)


def test_a_proxy_header_is_taken_only_in_django_s_form() -> None:
    settings = https_settings(EnvReader({"SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https"}))
    assert settings["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https"}, "must be 'HTTP_<HEADER>,<value>'"),
        ({"SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO"}, "must be 'HTTP_<HEADER>,<value>'"),
        ({"SECURE_SSL_REDIRECT": "sometimes"}, "SECURE_SSL_REDIRECT='sometimes' is not a boolean"),
        ({"SECURE_HSTS_SECONDS": "-1"}, "SECURE_HSTS_SECONDS=-1 must be at least 0"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message.replace("(", r"\(").replace(")", r"\)")):
        https_settings(EnvReader(environ))


def test_gunicorn_trusts_x_forwarded_proto_only_from_the_proxy(fleet: Fleet) -> None:
    url = fleet.start_web(extra_env={**CHART_HTTPS, "FORWARDED_ALLOW_IPS": f"{PROXY}/32"})
    spoof = {"X-Forwarded-Proto": "https", "Host": "localhost"}
    with httpx.Client(timeout=10) as direct:
        # A client that reaches the pod itself claims HTTPS: ignored, it gets the redirect.
        response = direct.get(f"{url}/", headers=spoof)
        assert response.status_code == 301
        assert response.headers["location"] == "https://localhost/"
        assert "strict-transport-security" not in response.headers
        # The kubelet's probes over plain HTTP are answered, not redirected.
        assert direct.get(f"{url}/healthz", headers={"Host": "localhost"}).status_code == 200
        assert direct.get(f"{url}/readyz", headers={"Host": "localhost"}).status_code == 200
    with httpx.Client(timeout=10, transport=httpx.HTTPTransport(local_address=PROXY)) as proxy:
        # The same header from the proxy's address: the request is HTTPS, served, with HSTS.
        response = proxy.get(f"{url}/", headers=spoof)
        assert response.status_code == 200, response.text[:500]
        assert response.headers["strict-transport-security"] == (
            "max-age=31536000; includeSubDomains; preload"
        )
        # Without the header even the proxy's plain HTTP is redirected.
        assert proxy.get(f"{url}/", headers={"Host": "localhost"}).status_code == 301
