"""The workflow's Lambda functions, from the one table in `scones.workflow_functions`.

Each function is created, or its code (when the zip's CodeSha256 differs) and configuration
brought up to date. After every change the deploy waits as AWS asks: `State` Active after a
create, `LastUpdateStatus` Successful after an update, and fails with the function's own
`StateReason` / `LastUpdateStatusReason` when it turns Failed. Logs are Lambda's own JSON lines
(`LoggingConfig`), not a formatter inside each function.

The state machine invokes each function's `live` alias, which points at a published version
(published again only when the code or configuration changed, LoggingConfig and Layers
included). After the alias moved, versions older than the newest KEEP_VERSIONS are deleted,
except any an alias points or routes to (the same calls on AWS, which refuses to delete those).
The alias carries the ProvisionedConcurrencyConfig (`SCONES_PROVISIONED_CONCURRENCY`): that
many environments are initialised before the first execution and never reaped, so a burst of
executions does not cold-start them. On AWS they are billed while configured, so `auto`
provisions only on the local stack; with 0 an existing config is deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import ClientError

from lambdas.package import build_zip
from scones.deploy.context import DeployContext, DeployError, DeployResult
from scones.workflow_functions import HANDLER, WORKFLOW_FUNCTIONS, WorkflowFunction
from services.local_aws.profile import PROFILE as LOCAL_PROFILE

LOGGING_CONFIG = {"LogFormat": "JSON"}
ALIAS = "live"
NO_CONFIG = "ProvisionedConcurrencyConfigNotFoundException"
# `auto` on the local stack: 4.4 MB of PSS each. 600 executions started 32 at a time right
# after a deploy (`bench_burst`): with 4 per function, 34-36 environments cold-start in the
# burst's first milliseconds and p99/p50 was 3.1-3.7; with 8, 23-24 and 2.1 (same script).
LOCAL_PROVISIONED = 8
# Fields of a published version compared with $LATEST's to tell whether to publish again
# (Environment, LoggingConfig and Layers are compared by `version_settings`).
VERSIONED_FIELDS = ("CodeSha256", "Runtime", "Role", "Handler", "Timeout", "MemorySize")
# Published versions kept per function (the newest ones, and always the one `live` points at);
# older ones are deleted after the alias moved, as mature deploy tools prune them.
KEEP_VERSIONS = 3


def function_environment(ctx: DeployContext, function: WorkflowFunction) -> dict[str, str]:
    """A function's environment variables, each from the setting the table names."""
    return {
        variable: str(getattr(ctx.settings, setting))
        for variable, setting in function.environment.items()
    }


def wanted_configuration(
    ctx: DeployContext, result: DeployResult, function: WorkflowFunction
) -> dict[str, Any]:
    """The configuration the function should have."""
    return {
        "Runtime": ctx.settings.lambda_runtime,
        "Role": result.roles[function.name(ctx.prefix)],
        "Handler": HANDLER,
        "Timeout": function.timeout_s,
        "MemorySize": function.memory_mb,
        "Environment": {"Variables": function_environment(ctx, function)},
        "LoggingConfig": LOGGING_CONFIG,
    }


def differing_configuration(current: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The names of the wanted configuration fields the function does not have yet."""
    differing = []
    for key, value in wanted.items():
        if key == "Environment":
            have: Any = {"Variables": current.get("Environment", {}).get("Variables", {})}
        elif key == "LoggingConfig":
            # AWS always reports LoggingConfig; a service that reports none cannot set it.
            if "LoggingConfig" not in current:
                continue
            have = {"LogFormat": current["LoggingConfig"].get("LogFormat", "Text")}
        else:
            have = current.get(key)
        if have != value:
            differing.append(key)
    return sorted(differing)


def ensure_functions(ctx: DeployContext, result: DeployResult) -> None:
    """Create each function, or update its code (if the zip changed) and configuration; then its
    published version, `live` alias and provisioned concurrency, the alias the ARN recorded."""
    provisioned = provisioned_concurrency(ctx)
    for function in WORKFLOW_FUNCTIONS:
        ensure_function(ctx, result, function)
        if not ctx.options.skip_functions:
            ensure_alias(ctx, result, function, provisioned)


def provisioned_concurrency(ctx: DeployContext) -> int:
    """Environments to provision per function: the setting, `auto` resolved for the target."""
    value = ctx.settings.provisioned_concurrency.strip().lower()
    if value == "auto":
        # The local stack's profile (make up / demo); any other profile may be billed for it.
        return LOCAL_PROVISIONED if boto3.session.Session().profile_name == LOCAL_PROFILE else 0
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise DeployError(
            f"SCONES_PROVISIONED_CONCURRENCY must be `auto` or a whole number >= 0, got {value!r}"
        )
    return count


def ensure_alias(
    ctx: DeployContext, result: DeployResult, function: WorkflowFunction, provisioned: int
) -> None:
    """Publish a version if $LATEST differs from the newest one, point `live` at it, provision
    `provisioned` environments on the alias; the alias ARN becomes the function's ARN."""
    lam = ctx.client("lambda")
    name = function.name(ctx.prefix)
    unqualified = result.functions[function.suffix]
    result.functions[function.suffix] = f"{unqualified}:{ALIAS}"
    if ctx.options.plan:  # the function line already says what would change
        return
    latest = lam.get_function_configuration(FunctionName=name)
    version = newest_matching_version(lam, name, latest)
    changes = []
    if version is None:
        version = lam.publish_version(FunctionName=name, CodeSha256=latest["CodeSha256"])["Version"]
        wait_function(ctx, name, "function_active_v2", qualifier=version)
        changes.append(f"published version {version}")
    try:
        alias = lam.get_alias(FunctionName=name, Name=ALIAS)
    except lam.exceptions.ResourceNotFoundException:
        alias = None
    if alias is None:
        lam.create_alias(FunctionName=name, Name=ALIAS, FunctionVersion=version)
        changes.append(f"alias -> {version}")
    elif alias["FunctionVersion"] != version:
        lam.update_alias(FunctionName=name, Name=ALIAS, FunctionVersion=version)
        changes.append(f"alias {alias['FunctionVersion']} -> {version}")
    changes += ensure_provisioned(ctx, name, provisioned)
    deleted = prune_versions(lam, name)
    if deleted:
        changes.append(f"deleted old version{'s' if len(deleted) > 1 else ''} {', '.join(deleted)}")
    action = ("create" if alias is None else "update") if changes else "unchanged"
    ctx.note(result, "lambda alias", f"{name}:{ALIAS}", action, "; ".join(changes))


def published_versions(lam: Any, name: str) -> list[dict[str, Any]]:
    """The function's published versions (not $LATEST), oldest first."""
    versions = []
    for page in lam.get_paginator("list_versions_by_function").paginate(FunctionName=name):
        versions += [v for v in page["Versions"] if v["Version"] != "$LATEST"]
    return sorted(versions, key=lambda v: int(v["Version"]))


def version_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What a published version freezes of a function's code and configuration."""
    logging = config.get("LoggingConfig") or {}
    return {
        **{key: config.get(key) for key in VERSIONED_FIELDS},
        "Environment": config.get("Environment", {}).get("Variables", {}),
        # The whole LoggingConfig: its format, levels and log group all change what runs.
        "LoggingConfig": {key: logging[key] for key in sorted(logging)},
        "Layers": [layer["Arn"] for layer in config.get("Layers") or ()],
    }


def newest_matching_version(lam: Any, name: str, latest: dict[str, Any]) -> str | None:
    """The newest published version with $LATEST's code and configuration, if any."""
    versions = published_versions(lam, name)
    if not versions:
        return None
    newest = versions[-1]
    return str(newest["Version"]) if version_settings(newest) == version_settings(latest) else None


def prune_versions(lam: Any, name: str, keep: int = KEEP_VERSIONS) -> list[str]:
    """Delete published versions older than the newest `keep`, except any an alias points or
    routes to; the ones deleted. A version still in use elsewhere (AWS refuses with
    ResourceConflictException) is left for a later deploy."""
    versions = [str(v["Version"]) for v in published_versions(lam, name)]
    in_use = set()
    for page in lam.get_paginator("list_aliases").paginate(FunctionName=name):
        for alias in page["Aliases"]:
            in_use.add(str(alias["FunctionVersion"]))
            in_use.update((alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights", {}))
    deleted = []
    for version in versions[: max(0, len(versions) - keep)]:
        if version in in_use:
            continue
        try:
            lam.delete_function(FunctionName=name, Qualifier=version)
        except ClientError as error:
            if error.response["Error"]["Code"] != "ResourceConflictException":
                raise
            continue
        deleted.append(version)
    return deleted


def ensure_provisioned(ctx: DeployContext, name: str, count: int) -> list[str]:
    """The alias's ProvisionedConcurrencyConfig set to `count` (deleted at 0), waited READY."""
    lam = ctx.client("lambda")
    try:
        current = lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier=ALIAS)
    except ClientError as error:
        # A bare 404: a stand-in for AWS without the API (moto) has no config either.
        code = error.response["Error"]["Code"]
        if code != NO_CONFIG and not (code == "404" and count == 0):
            raise
        current = None
    if count == 0:
        if current is None:
            return []
        lam.delete_provisioned_concurrency_config(FunctionName=name, Qualifier=ALIAS)
        return ["provisioned concurrency removed"]
    requested = current["RequestedProvisionedConcurrentExecutions"] if current else 0
    if requested != count:
        lam.put_provisioned_concurrency_config(
            FunctionName=name, Qualifier=ALIAS, ProvisionedConcurrentExecutions=count
        )
    # A moved alias takes its config along and provisions its new version (IN_PROGRESS again).
    wait_provisioned(ctx, name)
    return [f"provisioned concurrency {count}"] if requested != count else []


def wait_provisioned(ctx: DeployContext, name: str) -> None:
    """Poll until the alias's provisioned environments are READY (no boto3 waiter exists)."""
    lam = ctx.client("lambda")
    # AWS takes a minute or two, the local stack a fraction of a second: start polling fast.
    delay, deadline = 0.05, time.monotonic() + 900
    while True:
        config = lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier=ALIAS)
        if config["Status"] == "READY":
            return
        if config["Status"] == "FAILED" or time.monotonic() > deadline:
            raise DeployError(
                f"provisioned concurrency of {name}:{ALIAS} is {config['Status']}: "
                f"{config.get('StatusReason', 'not READY in time')}"
            )
        time.sleep(delay)
        delay = min(delay * 2, float(ctx.settings.waiter_delay_s))


def ensure_function(ctx: DeployContext, result: DeployResult, function: WorkflowFunction) -> None:
    """One function, brought to the wanted code and configuration, then waited for."""
    lam = ctx.client("lambda")
    name = function.name(ctx.prefix)
    if ctx.options.skip_functions:
        arn = f"arn:aws:lambda:{result.region}:{result.account_id}:function:{name}"
        result.functions[function.suffix] = arn
        ctx.note(result, "lambda function", name, "skip", "--skip-functions")
        return
    zip_bytes, sha = build_zip(function.folder)
    wanted = wanted_configuration(ctx, result, function)
    try:
        current = lam.get_function_configuration(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        current = None
    if current is None:
        arn = f"arn:aws:lambda:{result.region}:{result.account_id}:function:{name}"
        if not ctx.options.plan:
            arn = retry_role_propagation(
                lam.create_function,
                FunctionName=name,
                Code={"ZipFile": zip_bytes},
                Description=f"Scones Unlimited: {function.suffix}",
                **wanted,
            )["FunctionArn"]
            wait_function(ctx, name, "function_active_v2")
        result.functions[function.suffix] = arn
        ctx.note(result, "lambda function", name, "create")
        return
    result.functions[function.suffix] = current["FunctionArn"]
    changes = []
    action = "update"
    if current.get("State") == "Failed" or current.get("LastUpdateStatus") == "Failed":
        # A function left Failed (its code or role lost): upload the code again.
        reason = current.get("StateReason") or current.get("LastUpdateStatusReason") or ""
        changes.append(f"re-uploaded code (was Failed: {reason or 'no reason given'})")
        action = "heal"
        if not ctx.options.plan:
            try:
                lam.update_function_code(FunctionName=name, ZipFile=zip_bytes)
            except ClientError as error:
                raise DeployError(
                    f"lambda function {name} is Failed ({reason or 'no reason given'}); "
                    f"re-uploading its code failed: {error}"
                ) from error
            wait_function(ctx, name, "function_updated_v2")
            wait_function(ctx, name, "function_active_v2")  # still Failed: stop, with why
    elif current.get("CodeSha256") != sha:
        if not ctx.options.plan:
            lam.update_function_code(FunctionName=name, ZipFile=zip_bytes)
            wait_function(ctx, name, "function_updated_v2")
        changes.append("code")
    differing = differing_configuration(current, wanted)
    if differing:
        if not ctx.options.plan:
            retry_role_propagation(lam.update_function_configuration, FunctionName=name, **wanted)
            wait_function(ctx, name, "function_updated_v2")
        changes.append("configuration: " + ", ".join(differing))
    if not changes and not ctx.options.plan:
        # Unchanged, but maybe not ready yet (Pending, an update in flight): wait for it too.
        if current.get("State", "Active") != "Active":
            wait_function(ctx, name, "function_active_v2")
        if current.get("LastUpdateStatus", "Successful") != "Successful":
            wait_function(ctx, name, "function_updated_v2")
    ctx.note(
        result, "lambda function", name, action if changes else "unchanged", "; ".join(changes)
    )


def wait_function(ctx: DeployContext, name: str, waiter: str, qualifier: str | None = None) -> None:
    """Wait for Active / Successful; raise DeployError with Lambda's reason when it Failed."""
    qualified = {"Qualifier": qualifier} if qualifier else {}

    def reason() -> str:
        config = ctx.client("lambda").get_function_configuration(FunctionName=name, **qualified)
        if waiter == "function_active_v2":
            return f"State {config.get('State')}: {config.get('StateReason', '')}"
        return (
            f"LastUpdateStatus {config.get('LastUpdateStatus')}: "
            f"{config.get('LastUpdateStatusReason', '')}"
        )

    ctx.wait("lambda", waiter, f"lambda function {name}", reason, max_attempts=300,
             FunctionName=name, **qualified)  # fmt: skip


def retry_role_propagation(call: Callable[..., Any], **kwargs: Any) -> Any:
    """Call, retrying while a new IAM role is not yet assumable (seconds on AWS)."""
    for attempt in range(10):
        try:
            return call(**kwargs)
        except ClientError as error:
            if "cannot be assumed" not in str(error) or attempt == 9:
                raise
            time.sleep(min(2**attempt, 10))
    return None
