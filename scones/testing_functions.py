"""Lambda functions made from source text, for tests and benchmarks: zip, create, wait, invoke.

A deploy creates the workflow's functions from `lambdas/` (`scones.deploy.functions`); tests and
benchmarks of the runtime itself create small handlers of their own, the same way each time.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from scones.settings import REPO_ROOT
from scones.testing_models import import_file

ACTIVE_TIMEOUT_S = 60.0


def make_zip(code: str | Mapping[str, str]) -> bytes:
    """A deployment package: `app.py` holding `code`, or one entry per path of a mapping."""
    files = {"app.py": code} if isinstance(code, str) else code
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return buffer.getvalue()


def create_function(
    lam: Any,
    name: str,
    code: str | Mapping[str, str] | bytes,
    role: str,
    *,
    runtime: str = "python3.11",
    handler: str = "app.handler",
    **settings: Any,
) -> dict[str, Any]:
    """CreateFunction from source (or a zip), then wait until Active; CreateFunction's answer.

    `settings` are CreateFunction's own parameters (Timeout, Environment, LoggingConfig, ...).
    """
    zip_bytes = code if isinstance(code, bytes) else make_zip(code)
    created: dict[str, Any] = lam.create_function(
        FunctionName=name,
        Runtime=runtime,
        Role=role,
        Handler=handler,
        Code={"ZipFile": zip_bytes},
        **settings,
    )
    wait_active(lam, name)
    return created


def wait_active(lam: Any, name: str, timeout_s: float = ACTIVE_TIMEOUT_S) -> None:
    """Wait for State Active as a deploy must: a new function is Pending for a moment, as on AWS."""
    deadline = time.monotonic() + timeout_s
    while (configuration := lam.get_function_configuration(FunctionName=name))["State"] != "Active":
        assert configuration["State"] != "Failed", configuration.get("StateReason")
        assert time.monotonic() < deadline, f"{name} did not become Active"
        time.sleep(0.05)


def invoke(name: str, event: Any, lam: Any = None, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    """Invoke `name` with `event` as JSON; the response and its decoded payload.

    `lam` is a Lambda client; None: boto3's default one (the profile a test selected).
    """
    if lam is None:
        import boto3

        lam = boto3.client("lambda")
    response: dict[str, Any] = lam.invoke(
        FunctionName=name, Payload=json.dumps(event).encode(), **kwargs
    )
    return response, json.loads(response["Payload"].read())


def load_app(function: str) -> ModuleType:
    """Import `lambdas/<function>/app.py` as `<function>_app` (all three are `app`)."""
    return import_file(REPO_ROOT / "lambdas" / function / "app.py", f"{function}_app")
