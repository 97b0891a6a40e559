"""ProvisionedConcurrencyConfig (Put/Get/Delete), which moto lacks: environments initialised ahead.

A config on a published version or an alias starts that many environments in the background
(`AWS_LAMBDA_INITIALIZATION_TYPE=provisioned-concurrency`, no Init Duration on their first
invocation, never reaped as idle); its Status is IN_PROGRESS until they are all initialised,
then READY, as on AWS. Configs live on the function (they are lost with it). An alias moved to
another version takes its config along, as on AWS: the new version is provisioned (IN_PROGRESS
again until it is READY) and the old one's environments become ordinary warm ones.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from .lambda_runtime import LambdaRuntime
from .lambda_spec import FunctionSpec

PATH = (
    r"{0}/(?P<api_version>[^/]+)/functions/(?P<function_name>[\w_:%-]+)/provisioned-concurrency/?$"
)


_restore: Callable[[], int] | None = None


def restore_configs() -> int:
    """After persisted Lambda state is loaded: provision its configs again; how many."""
    return _restore() if _restore is not None else 0


def install(
    runtime: LambdaRuntime,
    spec_of: Callable[[Any], FunctionSpec],
    layer_zips: Callable[[Any], list[bytes]],
) -> None:
    """Route the three operations to the runtime (before moto's Lambda app is built)."""
    from moto.awslambda import responses, urls
    from moto.awslambda.exceptions import InvalidParameterValueException, LambdaClientError

    class ConfigNotFound(LambdaClientError):
        code = 404

        def __init__(self) -> None:
            super().__init__(
                "ProvisionedConcurrencyConfigNotFoundException",
                "No Provisioned Concurrency Config found for this function",
            )

    def target(response: Any) -> tuple[Any, Any, str]:
        """The unqualified function, the version the qualifier names, and the qualifier."""
        name = unquote(response.path.split("/functions/", 1)[1].split("/", 1)[0])
        qualifier = response._get_param("Qualifier")
        if not qualifier or qualifier == "$LATEST":
            raise InvalidParameterValueException(
                "Provisioned Concurrency Configs cannot be applied to unpublished function "
                "versions."
            )
        backend = response.backend
        latest = backend.get_function(name, None)
        version = backend.get_function(name, qualifier)
        return latest, version, qualifier

    def describe(latest: Any, version: Any, qualifier: str) -> dict[str, Any]:
        config = getattr(latest, "provisioned_configs", {}).get(qualifier)
        if config is None:
            raise ConfigNotFound()
        ready = min(runtime.provisioned_ready(spec_of(version)), config["requested"])
        return {
            "RequestedProvisionedConcurrentExecutions": config["requested"],
            "AvailableProvisionedConcurrentExecutions": ready,
            "AllocatedProvisionedConcurrentExecutions": ready,
            "Status": "READY" if ready >= config["requested"] else "IN_PROGRESS",
            "LastModified": config["last_modified"],
        }

    def put_provisioned_concurrency_config(self: Any) -> Any:
        latest, version, qualifier = target(self)
        requested = int(json.loads(self.body or "{}")["ProvisionedConcurrentExecutions"])
        if requested < 1:
            raise InvalidParameterValueException(
                "ProvisionedConcurrentExecutions must be at least 1."
            )
        configs = latest.__dict__.setdefault("provisioned_configs", {})
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime())
        configs[qualifier] = {"requested": requested, "last_modified": stamp}
        spec = spec_of(version)
        threading.Thread(
            target=runtime.provision,
            args=(spec, lambda: version.code_bytes, lambda: layer_zips(version), requested),
            daemon=True,
            name="lambda-provision",
        ).start()
        return 202, {}, json.dumps(describe(latest, version, qualifier))

    def get_provisioned_concurrency_config(self: Any) -> Any:
        latest, version, qualifier = target(self)
        return 200, {}, json.dumps(describe(latest, version, qualifier))

    def delete_provisioned_concurrency_config(self: Any) -> Any:
        latest, version, qualifier = target(self)
        if getattr(latest, "provisioned_configs", {}).pop(qualifier, None) is None:
            raise ConfigNotFound()
        threading.Thread(
            target=runtime.provision,
            args=(spec_of(version), lambda: version.code_bytes, lambda: layer_zips(version), 0),
            daemon=True,
        ).start()
        return 204, {}, ""

    from moto.awslambda import models

    original_update_alias = models.LambdaBackend.update_alias

    def update_alias(self: Any, name: str, function_name: str, *args: Any, **kwargs: Any) -> Any:
        before = self.get_function(function_name, name)  # the version the alias names now
        alias = original_update_alias(self, name, function_name, *args, **kwargs)
        latest = self.get_function(function_name, None)
        config = getattr(latest, "provisioned_configs", {}).get(name)
        after = self.get_function(function_name, name)
        if config is not None and after is not before:
            threading.Thread(
                target=_move,
                args=(before, after, config["requested"]),
                daemon=True,
                name="lambda-provision",
            ).start()
        return alias

    def _provision(version: Any, count: int) -> None:
        code = lambda: version.code_bytes  # noqa: E731
        runtime.provision(spec_of(version), code, lambda: layer_zips(version), count)

    def _move(before: Any, after: Any, requested: int) -> None:
        _provision(after, requested)
        _provision(before, 0)  # its environments become ordinary warm ones

    def restore() -> int:
        """Start the environments of every config restored from disk (a restart lost them)."""
        started = 0
        for _, regions in list(models.lambda_backends.items()):
            for backend in list(regions.values()):
                for latest in list(backend.list_functions()):
                    for qualifier, config in list(
                        getattr(latest, "provisioned_configs", {}).items()
                    ):
                        version = backend.get_function(latest.function_name, qualifier)
                        threading.Thread(
                            target=_provision,
                            args=(version, config["requested"]),
                            daemon=True,
                            name="lambda-provision",
                        ).start()
                        started += 1
        return started

    global _restore
    _restore = restore
    models.LambdaBackend.update_alias = update_alias  # type: ignore[method-assign]
    urls.url_paths[PATH] = responses.LambdaResponse.dispatch
    response_class: Any = responses.LambdaResponse
    response_class.put_provisioned_concurrency_config = put_provisioned_concurrency_config
    response_class.get_provisioned_concurrency_config = get_provisioned_concurrency_config
    response_class.delete_provisioned_concurrency_config = delete_provisioned_concurrency_config
