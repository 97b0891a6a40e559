"""Published versions as AWS keeps them, where moto differs: numbers and deletion.

- PublishVersion numbers a new version one past the highest ever published. moto counts the
  versions left, so after old ones are deleted it would hand out a number still in use.
- DeleteFunction of a version an alias points at (or routes weight to) is refused with
  ResourceConflictException, as on AWS; moto deletes it under the alias.
- A deleted version's ProvisionedConcurrencyConfig goes with it, and so do its environments.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from .lambda_runtime import LambdaRuntime
from .lambda_spec import FunctionSpec

_VERSION = re.compile(r"^[0-9]+$")


def _qualifier(name_or_arn: str, qualifier: str | None) -> tuple[str, str | None]:
    """The function's name or unqualified ARN and the qualifier, wherever it was given."""
    if name_or_arn.startswith("arn:"):
        head, _, rest = name_or_arn.partition(":function:")
        name, _, in_arn = rest.partition(":")
        return f"{head}:function:{name}", in_arn or qualifier
    name, _, in_name = name_or_arn.partition(":")
    return name, in_name or qualifier


def install(runtime: LambdaRuntime, spec_of: Callable[[Any], FunctionSpec]) -> None:
    """Patch moto's version numbering and version deletion."""
    from moto.awslambda import models
    from moto.awslambda.exceptions import LambdaClientError

    class ResourceConflictException(LambdaClientError):
        code = 409

        def __init__(self, message: str) -> None:
            super().__init__("ResourceConflictException", message)

    def publish_version(self: Any, name_or_arn: str, description: str = "") -> Any:
        # moto's, but numbered past the highest version ever published.
        function = self.get_function_by_name_or_arn_forbid_qualifier(name_or_arn)
        group = self._functions.get(function.function_name)
        if group is None or not group["latest"]:
            return None
        latest, versions = group["latest"], group["versions"]
        if versions and not function.code_or_config_updated:
            return versions[-1]  # nothing changed since: AWS answers with that version
        function.code_or_config_updated = False
        highest = max([getattr(latest, "highest_version", 0), *(int(v.version) for v in versions)])
        published = copy.copy(latest)
        published.set_version(highest + 1)
        latest.highest_version = highest + 1
        if description:
            published.description = description
        versions.append(published)
        self._arns[published.function_arn] = published
        return published

    original_delete = models.LambdaBackend.delete_function

    def delete_function(self: Any, function_name: str, qualifier: str | None = None) -> None:
        name, version = _qualifier(function_name, qualifier)
        if version is None or not _VERSION.match(version):
            original_delete(self, function_name, qualifier)
            return
        published = self.get_function(name, version)  # ResourceNotFound if there is none
        referring = sorted(
            alias.name
            for alias in self.list_aliases(name)
            if str(alias.function_version) == version
            or version in ((alias.routing_config or {}).get("AdditionalVersionWeights") or {})
        )
        if referring:
            raise ResourceConflictException(
                "Unable to delete version because the following aliases reference it: "
                f"[{', '.join(referring)}]"
            )
        spec = spec_of(published)
        original_delete(self, function_name, qualifier)
        latest = self.get_function(name, None)
        getattr(latest, "provisioned_configs", {}).pop(version, None)
        runtime.retire(spec)

    models.LambdaStorage.publish_version = publish_version  # type: ignore[method-assign]
    models.LambdaBackend.delete_function = delete_function  # type: ignore[method-assign]
