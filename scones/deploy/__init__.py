"""One idempotent deploy for every target: the AWS profile chooses where, nothing else.

`python -m scones.deploy` creates or updates, in order: the bucket; IAM roles with
least-privilege policies; the dataset (ETL); the training job; the SageMaker model, endpoint
config (with data capture) and endpoint; the three Lambda functions; the state machine. Each
step compares what exists with what is wanted and acts only on a difference, so a second run
changes nothing. `--plan` prints what would change and changes nothing.

After each change the deploy waits for the resource's status with boto3's waiters (function
Active / LastUpdateStatus Successful, endpoint InService, training job Completed) and stops with
the resource's own reason when it turns Failed. It heals a partial loss rather than stopping on
it: lost dataset objects are re-uploaded, a training job whose model artefact vanished is run
again (its next generation), a Failed endpoint is deleted and re-created, a Failed function gets
its code again; each heal is a `!` line saying what was lost.

AWS-only work is configuration, not a branch: `--push-image` (set by `make deploy-aws`) builds
the model-server image and pushes it to ECR; without it the image URI is only recorded, since
locally sagemaker-local runs the same server as a process.

Layout: `context` (options, result, change log, waits) underneath; one module per resource kind
(`storage`, `iam`, `images`, `training`, `hosting`, `functions`, `state_machine`); `deployer`
runs them in order; `cli` is the command line.
"""

from scones.deploy.cli import main, summary
from scones.deploy.context import Change, DeployError, DeployOptions, DeployResult
from scones.deploy.deployer import Deployer

__all__ = [
    "Change",
    "DeployError",
    "DeployOptions",
    "DeployResult",
    "Deployer",
    "main",
    "summary",
]
