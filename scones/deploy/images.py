"""The container images: AWS's PyTorch training image, and the project's model-server image.

The serving image is content-addressed (its tag is a digest of `services/model_server/`); with
`--push-image` (set by `make deploy-aws`) it is built and pushed to ECR, otherwise only its URI is
recorded, since locally sagemaker-local runs the same server as a process.
"""

from __future__ import annotations

import base64
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

from scones.archives import reproducible_tar_gz
from scones.deploy.context import DeployContext, DeployError, DeployResult, digest
from scones.settings import REPO_ROOT

SERVING_CONTEXT = REPO_ROOT / "services" / "model_server"


def training_image(ctx: DeployContext, region: str) -> str:
    """AWS's PyTorch training image for the region (the sagemaker SDK's image_uris)."""
    if ctx.settings.training_image:
        return ctx.settings.training_image
    from sagemaker.core import image_uris

    return str(
        image_uris.retrieve(
            framework="pytorch",
            region=region,
            version="2.5",
            py_version="py311",
            instance_type=ctx.settings.training_instance,
            image_scope="training",
        )
    )


def ensure_images(ctx: DeployContext, result: DeployResult) -> None:
    """Resolve both image URIs; build and push the serving image when asked to."""
    result.training_image = training_image(ctx, result.region)
    tag = digest(reproducible_tar_gz(SERVING_CONTEXT, lambda p: "__pycache__" not in p.parts))[:16]
    repository = f"{ctx.prefix}-model-server"
    uri = f"{result.account_id}.dkr.ecr.{result.region}.amazonaws.com/{repository}:{tag}"
    result.serving_image = ctx.settings.serving_image or uri
    if not ctx.options.push_image:
        ctx.note(result, "serving image", result.serving_image, "skip", "recorded, not pushed")
        return
    ecr = ctx.client("ecr")
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
        ctx.note(result, "serving image", result.serving_image, "unchanged")
        return
    except ClientError as error:
        if error.response["Error"]["Code"] == "RepositoryNotFoundException" and not (
            ctx.options.plan
        ):
            ecr.create_repository(
                repositoryName=repository,
                imageScanningConfiguration={"scanOnPush": True},
                imageTagMutability="IMMUTABLE",
            )
    if not ctx.options.plan:
        ctx.image_pusher(result.serving_image, SERVING_CONTEXT)
    ctx.note(result, "serving image", result.serving_image, "create", "built and pushed")


def push_image_to_ecr(image_uri: str, context: Path) -> None:
    """Build the model-server image with the docker SDK and push it to ECR."""
    import docker

    registry = image_uri.split("/", 1)[0]
    ecr = boto3.client("ecr")
    token = ecr.get_authorization_token()["authorizationData"][0]
    username, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    client = docker.from_env()
    client.login(username=username, password=password, registry=f"https://{registry}")
    client.images.build(path=str(context), tag=image_uri, platform="linux/amd64", rm=True)
    repository, tag = image_uri.rsplit(":", 1)
    for line in client.images.push(repository, tag=tag, stream=True, decode=True):
        if "error" in line:
            raise DeployError(f"pushing {image_uri}: {line['error']}")
