"""The deploy's hosting step (scones.deploy.hosting) on a fake AWS: model, endpoint config with
data capture, endpoint."""

from __future__ import annotations

import boto3

from scones.deploy import DeployResult


def test_the_model_runs_the_pushed_image_and_the_endpoint_captures_every_request(
    aws_deployed: DeployResult,
) -> None:
    sagemaker = boto3.client("sagemaker")
    model = sagemaker.describe_model(ModelName=aws_deployed.model_name)
    assert model["PrimaryContainer"]["Image"] == aws_deployed.serving_image
    config = sagemaker.describe_endpoint_config(EndpointConfigName=aws_deployed.endpoint_config)
    capture = config["DataCaptureConfig"]
    assert capture["EnableCapture"] is True
    assert capture["InitialSamplingPercentage"] == 100
    assert capture["DestinationS3Uri"] == f"s3://{aws_deployed.bucket}/data-capture"
    assert {o["CaptureMode"] for o in capture["CaptureOptions"]} == {"Input", "Output"}
    endpoint = sagemaker.describe_endpoint(EndpointName=aws_deployed.endpoint)
    assert endpoint["EndpointConfigName"] == aws_deployed.endpoint_config
