"""`make train`: a SageMaker training job on the current profile, its log streamed to the terminal.

The same training step as the deploy (bucket, roles and dataset first, all idempotent): on the
local stack it runs `model/train.py` through sagemaker-local; with an AWS profile, on SageMaker.
"""

from __future__ import annotations

import sys

from botocore.exceptions import ClientError

from .deploy import Deployer, DeployError, DeployOptions, DeployResult
from .settings import load


def main() -> int:
    """Stage the data if needed, then create the training job and follow it to its end."""
    settings = load()
    deployer = Deployer(settings, DeployOptions())
    try:
        account = deployer.client("sts").get_caller_identity()["Account"]
        result = DeployResult(
            account_id=account,
            region=settings.region,
            bucket=settings.bucket_for(account),
            data_prefix=settings.data_prefix.strip("/"),
        )
        deployer.ensure_bucket(result)
        deployer.ensure_roles(result)
        deployer.ensure_data(result)
        deployer.ensure_training(result)
    except (DeployError, ClientError) as error:
        print(f"\ntraining failed: {error}", file=sys.stderr)
        return 1
    print(f"\nmodel: {result.model_artifact}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
