"""Hosting: the SageMaker model, the endpoint config (with data capture) and the endpoint.

Names are digests of what they hold, so a new model or capture setting is a new config and an
`UpdateEndpoint`. A Failed endpoint cannot be updated on AWS: the deploy heals it by deleting and
re-creating it (after the training step has re-made a lost model), and says why it failed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from botocore.exceptions import ClientError

from scones.deploy.context import VARIANT, DeployContext, DeployResult, digest, exists


def ensure_model(ctx: DeployContext, result: DeployResult) -> None:
    """The SageMaker model: the serving image with the trained artefact."""
    sagemaker = ctx.client("sagemaker")
    model_hash = digest(result.model_artifact, result.serving_image)[:12]
    result.model_name = f"{ctx.prefix}-model-{model_hash}"
    if exists(lambda: sagemaker.describe_model(ModelName=result.model_name)):
        ctx.note(result, "sagemaker model", result.model_name, "unchanged")
        return
    if not ctx.options.plan:
        sagemaker.create_model(
            ModelName=result.model_name,
            PrimaryContainer={
                "Image": result.serving_image,
                "ModelDataUrl": result.model_artifact,
                "Environment": {"MODEL_SERVER_WORKERS": "1"},
            },
            ExecutionRoleArn=result.roles[f"{ctx.prefix}-sagemaker"],
        )
    ctx.note(result, "sagemaker model", result.model_name, "create")


def capture_config(destination: str, percentage: int = 100) -> dict[str, Any]:
    """The endpoint's DataCaptureConfig: inputs and outputs, JSON answers stored as JSON."""
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": percentage,
        "DestinationS3Uri": destination,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }


def ensure_endpoint_config(ctx: DeployContext, result: DeployResult) -> None:
    """The endpoint config: one variant, data capture of every input and output."""
    sagemaker = ctx.client("sagemaker")
    result.capture_uri = f"s3://{result.bucket}/data-capture"
    capture = capture_config(result.capture_uri, ctx.settings.capture_percentage)
    variant = {
        "VariantName": VARIANT,
        "ModelName": result.model_name,
        "InitialInstanceCount": 1,
        "InstanceType": ctx.settings.endpoint_instance,
        "InitialVariantWeight": 1.0,
    }
    config_hash = digest(json.dumps([variant, capture], sort_keys=True))[:12]
    result.endpoint_config = f"{ctx.prefix}-epc-{config_hash}"
    name = result.endpoint_config
    if exists(lambda: sagemaker.describe_endpoint_config(EndpointConfigName=name)):
        ctx.note(result, "endpoint config", name, "unchanged")
        return
    if not ctx.options.plan:
        sagemaker.create_endpoint_config(
            EndpointConfigName=name, ProductionVariants=[variant], DataCaptureConfig=capture
        )
    ctx.note(result, "endpoint config", name, "create")


def _describe_endpoint(ctx: DeployContext, name: str) -> dict[str, Any] | None:
    try:
        return dict(ctx.client("sagemaker").describe_endpoint(EndpointName=name))
    except ClientError:
        return None


def ensure_endpoint(ctx: DeployContext, result: DeployResult) -> None:
    """Model, endpoint config with data capture, endpoint (waits until InService)."""
    ensure_model(ctx, result)
    ensure_endpoint_config(ctx, result)
    sagemaker = ctx.client("sagemaker")
    result.endpoint = name = ctx.settings.endpoint_name
    endpoint = _describe_endpoint(ctx, name)
    plan = ctx.options.plan
    detail = ""
    if endpoint is not None and endpoint["EndpointStatus"] == "Failed":
        # AWS refuses UpdateEndpoint on a Failed endpoint: delete it, then create it afresh.
        action = "heal"
        detail = f"re-created (was Failed: {endpoint.get('FailureReason', 'no reason given')})"
        if not plan:
            sagemaker.delete_endpoint(EndpointName=name)
            ctx.wait("sagemaker", "endpoint_deleted", f"deleting Failed endpoint {name}",
                     lambda: "", EndpointName=name)  # fmt: skip
            sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=result.endpoint_config)
    elif endpoint is None:
        action = "create"
        if not plan:
            sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=result.endpoint_config)
    elif endpoint["EndpointConfigName"] != result.endpoint_config:
        action = "update"
        if not plan:
            # An update in flight must end before the next one is accepted.
            if endpoint["EndpointStatus"] in ("Creating", "Updating", "SystemUpdating"):
                _wait_in_service(ctx, name)
            sagemaker.update_endpoint(EndpointName=name, EndpointConfigName=result.endpoint_config)
    else:
        action = "unchanged"
    if plan:
        ctx.note(result, "endpoint", name, action, detail)
        return
    started = time.monotonic()
    _wait_in_service(ctx, name)
    if action != "unchanged":
        took = f"InService in {time.monotonic() - started:.0f}s"
        detail = f"{detail}; {took}" if detail else took
    ctx.note(result, "endpoint", name, action, detail)


def _wait_in_service(ctx: DeployContext, name: str) -> None:
    def reason() -> str:
        described = _describe_endpoint(ctx, name) or {}
        status = described.get("EndpointStatus", "gone")
        return f"{status}: {described.get('FailureReason', 'no reason given')}"

    ctx.wait("sagemaker", "endpoint_in_service", f"endpoint {name} did not come InService",
             reason, EndpointName=name)  # fmt: skip
