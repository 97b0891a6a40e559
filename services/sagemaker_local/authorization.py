"""IAM for SageMaker calls: role credentials are checked by the emulator, as AWS would.

sagemaker-local has no IAM of its own. For a request signed with any access key other than
the administrator's (the `local` profile's keys, and the keys sagemaker-local itself runs
with), it asks the emulator (`POST /_local_aws/iam/authorize`, see
services/local_aws/iam_authorize.py) whether the principal may perform the action:

- control plane: `sagemaker:<Operation>` (the `X-Amz-Target` name) on the resource the call
  names, `arn:aws:sagemaker:REGION:ACCOUNT:<kind>/<name lower-cased>` (`*` for List*);
- runtime: `sagemaker:InvokeEndpoint` on `arn:aws:sagemaker:REGION:ACCOUNT:endpoint/<name>`.

A refusal is `AccessDeniedException` (HTTP 400, AWS's status for it on both SageMaker APIs)
with the emulator's AWS-worded message. Decisions are cached for `ttl_s` (1 s) per (key,
token, action, resource), so warm invokes pay one lookup a second, and a policy change is
seen within a second. The emulator's `LOCAL_AWS_IAM_ENFORCE=0` allows everything. An
emulator without the endpoint (e.g. LocalStack, 404) means no checks (logged once); one that
does not answer is a retryable 503, never an allow.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .exceptions import (
    AccessDeniedException,
    ExpiredTokenException,
    SageMakerError,
    ServiceUnavailable,
    UnrecognizedClientException,
)

log = logging.getLogger(__name__)

PATH = "/_local_aws/iam/authorize"
ADMIN_ACCESS_KEYS = ("test",)  # services/local_aws/profile.py: the account's administrator
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
_VERBS = ("Create", "Describe", "Delete", "Stop", "Update", "Start", "List")


_ERRORS: dict[str, type[SageMakerError]] = {
    cls.code: cls
    for cls in (AccessDeniedException, UnrecognizedClientException, ExpiredTokenException)
}


def access_key_of(headers: Mapping[bytes, bytes]) -> str | None:
    """The SigV4 access key id of a request (None: unsigned)."""
    match = _CREDENTIAL.search(headers.get(b"authorization", b"").decode("latin-1"))
    return match.group(1) if match else None


def resource_arn(region: str, account: str, operation: str, params: Mapping[str, Any]) -> str:
    """The ARN a control-plane call acts on, as IAM sees it (`*` when it names none)."""
    noun = operation
    for verb in _VERBS:
        if operation.startswith(verb):
            if verb == "List":
                return "*"
            noun = operation[len(verb) :]
            break
    name = params.get(f"{noun}Name")
    if not isinstance(name, str) or not name:
        return "*"
    kind = re.sub(r"(?<!^)(?=[A-Z])", "-", noun).lower()  # EndpointConfig -> endpoint-config
    return f"arn:aws:sagemaker:{region}:{account}:{kind}/{name.lower()}"


def endpoint_arn(region: str, account: str, endpoint_name: str) -> str:
    """The resource of InvokeEndpoint (AWS lower-cases endpoint names in ARNs)."""
    return f"arn:aws:sagemaker:{region}:{account}:endpoint/{endpoint_name.lower()}"


class Authorizer:
    """Asks the emulator about non-administrator callers; caches answers for a moment."""

    def __init__(
        self,
        emulator_url: str,
        region: str,
        admin_access_keys: Iterable[str] = ADMIN_ACCESS_KEYS,
        ttl_s: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        parts = urlsplit(emulator_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.region = region
        self.admin_access_keys = frozenset(k for k in admin_access_keys if k)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.available = True
        self._cache: dict[tuple[str, str, str, str], tuple[float, dict[str, Any]]] = {}
        self.lookups = 0  # answers fetched from the emulator (not the cache): for the health

    @classmethod
    def for_endpoint(
        cls, emulator_url: str | None, region: str, admin_access_keys: Iterable[str]
    ) -> Authorizer | None:
        """An authorizer for a local emulator's URL; None for real AWS (nothing to ask)."""
        if not emulator_url or urlsplit(emulator_url).hostname not in LOOPBACK_HOSTS:
            return None
        return cls(emulator_url, region, [*ADMIN_ACCESS_KEYS, *admin_access_keys])

    async def check(self, headers: Mapping[bytes, bytes], action: str, resource: str) -> None:
        """Return if the caller may perform `action` on `resource`; raise its refusal if not."""
        access_key_id = access_key_of(headers)
        if access_key_id is None or access_key_id in self.admin_access_keys:
            return
        if not self.available:
            return
        token = headers.get(b"x-amz-security-token", b"").decode("latin-1")
        key = (access_key_id, token, action, resource)
        now = time.monotonic()
        cached = self._cache.get(key)
        answer: dict[str, Any] | None
        if cached is not None and cached[0] > now:
            answer = cached[1]
        else:
            answer = await asyncio.to_thread(self._ask, access_key_id, token, action, resource)
            if answer is None:
                return
            if len(self._cache) > 4096:  # bounded: drop everything stale
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[key] = (now + self.ttl_s, answer)
        if not answer.get("allowed"):
            error = _ERRORS.get(str(answer.get("code")), AccessDeniedException)
            raise error(str(answer.get("message") or f"not authorized to perform: {action}"))

    def _ask(
        self, access_key_id: str, token: str, action: str, resource: str
    ) -> dict[str, Any] | None:
        question: dict[str, Any] = {
            "access_key_id": access_key_id,
            "action": action,
            "resource": resource,
            "region": self.region,
        }
        if token:
            question["session_token"] = token
        body = json.dumps(question).encode()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            connection.request(
                "POST",
                PATH,
                body,
                {"Content-Type": "application/json", "Host": f"127.0.0.1:{self.port}"},
            )
            response = connection.getresponse()
            status, payload = response.status, response.read()
        except OSError as exc:
            raise ServiceUnavailable(
                f"IAM authorization is unavailable (emulator at {self.host}:{self.port}: {exc}). "
                "Try your call again."
            ) from exc
        finally:
            connection.close()
        self.lookups += 1
        if status == 404:
            # An emulator without this endpoint (LocalStack): it cannot tell, so no checks.
            log.warning("%s:%s has no %s: IAM is not checked", self.host, self.port, PATH)
            self.available = False
            return None
        if status != 200:
            raise ServiceUnavailable(
                f"IAM authorization failed ({status}: {payload[:200].decode(errors='replace')})."
            )
        answer: dict[str, Any] = json.loads(payload)
        return answer
