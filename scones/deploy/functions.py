"""The workflow's Lambda functions, from the one table in `scones.workflow_functions`.

Each function is created, or its code (when the zip's CodeSha256 differs) and configuration
brought up to date. After every change the deploy waits as AWS asks: `State` Active after a
create, `LastUpdateStatus` Successful after an update, and fails with the function's own
`StateReason` / `LastUpdateStatusReason` when it turns Failed. Logs are Lambda's own JSON lines
(`LoggingConfig`), not a formatter inside each function.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from lambdas.package import build_zip
from scones.deploy.context import DeployContext, DeployError, DeployResult
from scones.workflow_functions import HANDLER, WORKFLOW_FUNCTIONS, WorkflowFunction

LOGGING_CONFIG = {"LogFormat": "JSON"}


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
    """Create each function, or update its code (if the zip changed) and configuration."""
    for function in WORKFLOW_FUNCTIONS:
        ensure_function(ctx, result, function)


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


def wait_function(ctx: DeployContext, name: str, waiter: str) -> None:
    """Wait for Active / Successful; raise DeployError with Lambda's reason when it Failed."""

    def reason() -> str:
        config = ctx.client("lambda").get_function_configuration(FunctionName=name)
        if waiter == "function_active_v2":
            return f"State {config.get('State')}: {config.get('StateReason', '')}"
        return (
            f"LastUpdateStatus {config.get('LastUpdateStatus')}: "
            f"{config.get('LastUpdateStatusReason', '')}"
        )

    ctx.wait("lambda", waiter, f"lambda function {name}", reason, max_attempts=300,
             FunctionName=name)  # fmt: skip


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
