"""Browser safety: the guard's rules, and the emulator refusing what a hostile page would send."""

from __future__ import annotations

import http.client
import urllib.parse
import uuid

import boto3
import pytest

from services import browser_guard
from services.browser_guard import refusal
from tests.conftest import LocalAws

LOCAL = {"Host": "127.0.0.1:4566"}


@pytest.fixture(autouse=True)
def _no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(browser_guard.ORIGINS_SETTING, raising=False)
    monkeypatch.delenv(browser_guard.HOSTS_SETTING, raising=False)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:4566",
        "localhost:4566",
        "LOCALHOST",
        "[::1]:4566",
        "bucket.s3.localhost:4566",
        "localstack:4566",
        "sagemaker-local:8443",
    ],
)
def test_our_host_names_and_sdk_requests_proceed(host: str) -> None:
    sdk_headers = {"Host": host, "User-Agent": "Boto3/1.40", "Authorization": "AWS4-HMAC-SHA256 x"}
    assert refusal("POST", "/", sdk_headers) is None


@pytest.mark.parametrize("host", ["evil.example", "evil.example:4566", "127.0.0.1.nip.io", "[::2]"])
def test_a_foreign_host_is_refused_as_dns_rebinding_sends_it(host: str) -> None:
    refused = refusal("GET", "/", {"Host": host})
    assert refused is not None
    assert refused[0] == 403
    assert browser_guard.HOSTS_SETTING in refused[1]


def test_configured_and_extra_hosts_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert refusal("GET", "/", {"Host": "box.lan:4566"}, configured_hosts=["box.lan"]) is None
    assert refusal("GET", "/", {"Host": "box.lan:4566"}) is not None
    monkeypatch.setenv(browser_guard.HOSTS_SETTING, "box.lan, *.corp.example")
    assert refusal("GET", "/", {"Host": "box.lan:4566"}) is None
    assert refusal("GET", "/", {"Host": "a.corp.example"}) is None
    assert refusal("GET", "/", {"Host": "corp.example.evil"}) is not None
    # Binding every interface does not make every Host name ours.
    assert refusal("GET", "/", {"Host": "evil.example"}, configured_hosts=["0.0.0.0"]) is not None


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "OPTIONS"])
def test_a_foreign_origin_is_refused_simple_requests_and_preflights_alike(method: str) -> None:
    refused = refusal(method, "/my-bucket", {**LOCAL, "Origin": "http://evil.example"})
    assert refused is not None and refused[0] == 403
    assert "evil.example" in refused[1]


def test_another_local_port_is_another_origin() -> None:
    assert refusal("GET", "/", {**LOCAL, "Origin": "http://localhost:3000"}) is not None
    assert refusal("GET", "/", {**LOCAL, "Origin": "null"}) is not None


def test_same_origin_proceeds() -> None:
    assert refusal("POST", "/moto-api/reset", {**LOCAL, "Origin": "http://127.0.0.1:4566"}) is None


def test_allowlisted_origins_proceed_but_never_reach_management(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(browser_guard.ORIGINS_SETTING, "http://localhost:3000/, https://app.test")
    assert refusal("OPTIONS", "/b", {**LOCAL, "Origin": "http://localhost:3000"}) is None
    assert refusal("GET", "/b", {**LOCAL, "Origin": "HTTPS://APP.TEST"}) is None
    assert refusal("GET", "/b", {**LOCAL, "Origin": "http://app.test"}) is not None
    for path in ("/moto-api/reset", "/moto-api", "/_local_aws/health"):
        refused = refusal("POST", path, {**LOCAL, "Origin": "http://localhost:3000"})
        assert refused is not None and "cross-origin" in refused[1]


def test_fetch_metadata_marks_no_cors_subresources_as_foreign() -> None:
    assert refusal("GET", "/b/k", {**LOCAL, "Sec-Fetch-Site": "cross-site"}) is not None
    assert refusal("GET", "/b/k", {**LOCAL, "Sec-Fetch-Site": "same-site"}) is not None
    assert refusal("GET", "/b/k", {**LOCAL, "Sec-Fetch-Site": "none"}) is None
    assert refusal("GET", "/b/k", {**LOCAL, "Sec-Fetch-Site": "same-origin"}) is None


def test_header_names_are_case_insensitive_and_wsgi_environ_works() -> None:
    assert refusal("GET", "/", {"host": "127.0.0.1", "ORIGIN": "http://evil.example"}) is not None
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/moto-api/reset", "HTTP_HOST": "evil.test"}
    assert browser_guard.wsgi_refusal(environ) is not None
    environ["HTTP_HOST"] = "localhost"
    assert browser_guard.wsgi_refusal(environ) is None


def _raw(
    endpoint_url: str, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with exactly these headers (a browser's, not boto3's)."""
    parsed = urllib.parse.urlsplit(endpoint_url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host="Host" in headers)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture
def bucket(local_aws: LocalAws) -> str:
    name = f"guard-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="secret.txt", Body=b"recipe")
    return name


def test_emulator_refuses_a_foreign_origin_listing_a_bucket(
    local_aws: LocalAws, bucket: str
) -> None:
    status, headers, body = _raw(
        local_aws.endpoint_url, "GET", f"/{bucket}", {"Origin": "http://evil.example"}
    )
    assert status == 403
    assert b"secret.txt" not in body
    assert not any(name.startswith("access-control-allow") for name in headers)
    # The same request without a browser's Origin is what an SDK sends, and it is served.
    status, _, body = _raw(local_aws.endpoint_url, "GET", f"/{bucket}", {})
    assert status == 200 and b"secret.txt" in body


def test_emulator_answers_a_foreign_preflight_without_cors_headers(local_aws: LocalAws) -> None:
    status, headers, _ = _raw(
        local_aws.endpoint_url,
        "OPTIONS",
        "/any-bucket",
        {"Origin": "http://evil.example", "Access-Control-Request-Method": "PUT"},
    )
    assert status == 403
    assert not any(name.startswith("access-control-allow") for name in headers)


def test_emulator_refuses_a_rebinding_host(local_aws: LocalAws, bucket: str) -> None:
    port = urllib.parse.urlsplit(local_aws.endpoint_url).port
    status, _, body = _raw(
        local_aws.endpoint_url, "GET", f"/{bucket}", {"Host": f"rebind.evil.example:{port}"}
    )
    assert status == 403 and b"secret.txt" not in body


def test_text_plain_post_to_moto_reset_is_refused_and_state_survives(
    local_aws: LocalAws, bucket: str
) -> None:
    # A "simple" request (no preflight), marked cross-site either way a browser does.
    for cross_site in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        headers = {**cross_site, "Content-Type": "text/plain"}
        status, _, _ = _raw(local_aws.endpoint_url, "POST", "/moto-api/reset", headers, b"x")
        assert status == 403, cross_site
    assert (
        boto3.client("s3").get_object(Bucket=bucket, Key="secret.txt")["Body"].read() == b"recipe"
    )
