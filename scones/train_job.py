"""`make train`: a SageMaker training job on the current profile, its log streamed to the terminal.

The deploy's first steps (bucket, images, roles, dataset, all idempotent) and its training step:
on the local stack it runs `model/train.py` through sagemaker-local; with an AWS profile, on
SageMaker.
"""

from __future__ import annotations

import argparse
import sys

from scones.deploy import DeployOptions, iam, images, storage, training
from scones.deploy.cli import run_deploy

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
    deployed = run_deploy(DeployOptions(), STEPS, "training")
    if deployed is None:
        return 1
    _, result = deployed
    print(f"\nmodel: {result.model_artifact}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
