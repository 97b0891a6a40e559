"""The whole deploy, in order: each step is one resource module's `ensure_*`."""

from __future__ import annotations

from collections.abc import Callable

from scones.deploy import functions, hosting, iam, images, state_machine, storage, training
from scones.deploy.context import DeployContext, DeployOptions, DeployResult, ImagePusher
from scones.settings import Settings

Step = Callable[[DeployContext, DeployResult], None]
# Images come before the roles: the SageMaker role names the image repositories it pulls from.
STEPS: tuple[Step, ...] = (
    storage.ensure_bucket,
    images.ensure_images,
    iam.ensure_roles,
    storage.ensure_data,
    training.ensure_training,
    hosting.ensure_endpoint,
    functions.ensure_functions,
    state_machine.ensure_state_machine,
)


class Deployer:
    """Brings the target account to the wanted state, step by step, idempotently."""

    def __init__(
        self,
        settings: Settings,
        options: DeployOptions,
        image_pusher: ImagePusher | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.context = DeployContext(
            settings=options.applied_to(settings),
            options=options,
            image_pusher=image_pusher or images.push_image_to_ecr,
            echo=echo,
        )

    def start(self) -> DeployResult:
        """The result to fill, for the account and region the profile reaches."""
        ctx = self.context
        account = ctx.client("sts").get_caller_identity()["Account"]
        return DeployResult(
            account_id=account,
            region=ctx.settings.region,
            bucket=ctx.settings.bucket_for(account),
            data_prefix=ctx.settings.data_prefix.strip("/"),
            threshold=ctx.settings.threshold,
        )

    def deploy(self, steps: tuple[Step, ...] = STEPS) -> DeployResult:
        """Run the steps in order and return what was deployed."""
        result = self.start()
        self.context.echo(
            f"Deploying to account {result.account_id}, region {result.region}"
            f"{' (plan only: nothing is changed)' if self.context.options.plan else ''}"
        )
        for step in steps:
            step(self.context, result)
        return result
