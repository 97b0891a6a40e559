"""`make train`: a SageMaker training job on the current profile, its log streamed to the terminal.

The deploy's first steps (bucket, images, roles, dataset, all idempotent) and its training step:
on the local stack it runs `model/train.py` through sagemaker-local; with an AWS profile, on
SageMaker.
"""

from __future__ import annotations

import argparse
import sys

from botocore.exceptions import BotoCoreError, ClientError

from scones.deploy import Deployer, DeployError, DeployOptions, iam, images, storage, training
from scones.settings import SettingsError, load

STEPS = (
    storage.ensure_bucket,
    images.ensure_images,
    iam.ensure_roles,
    storage.ensure_data,
    training.ensure_training,
)


def main(argv: list[str] | None = None) -> int:
    """Stage the data if needed, then create the training job and follow it to its end."""
    argparse.ArgumentParser(prog="python -m scones.train_job", description=__doc__).parse_args(argv)
    try:
        result = Deployer(load(), DeployOptions()).deploy(STEPS)
    except (DeployError, ClientError, BotoCoreError, SettingsError) as error:
        print(f"\ntraining failed: {error}", file=sys.stderr)
        return 1
    print(f"\nmodel: {result.model_artifact}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
