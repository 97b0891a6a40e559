"""`python -m scones.deploy [--plan] [--push-image] ...`: the deploy's command line and summary."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable

from botocore.exceptions import BotoCoreError, ClientError

from scones.deploy.context import VARIANT, DeployError, DeployOptions, DeployResult
from scones.deploy.deployer import STEPS, Deployer, Step
from scones.settings import Settings, SettingsError, load

DESCRIPTION = (
    "Create or update, idempotently, everything the workflow needs on the target the AWS "
    "profile chooses: bucket, roles, dataset, training job, endpoint, Lambdas, state machine."
)


# What a deploy ends with when it cannot finish: a step's reason, AWS's answer, a bad knob.
DEPLOY_ERRORS = (DeployError, ClientError, BotoCoreError, SettingsError)


def run_deploy(
    options: DeployOptions, steps: tuple[Step, ...] = STEPS, what: str = "deploy"
) -> tuple[Settings, DeployResult] | None:
    """Load the settings and run the steps; on failure `None`, "<what> failed: why" printed."""
    try:
        settings = load()
        return settings, Deployer(settings, options).deploy(steps)
    except DEPLOY_ERRORS as error:
        print(f"\n{what} failed: {error}", file=sys.stderr)
        return None


def summary(result: DeployResult) -> str:
    """The human summary printed at the end of a deploy."""
    execution_input = json.dumps(
        {"s3_bucket": result.bucket, "s3_key": f"{result.data_prefix}/test/<image>.png"}
    )
    lines = [
        "",
        "Deployed:" if result.changed else "Nothing to change: everything is up to date.",
        f"  bucket            s3://{result.bucket}/{result.data_prefix}/",
        f"  training job      {result.training_job}",
        f"  model artifact    {result.model_artifact}",
        f"  serving image     {result.serving_image}",
        f"  endpoint          {result.endpoint} ({result.endpoint_config})",
        f"  data capture      {result.capture_uri}/{result.endpoint}/{VARIANT}/",
        *[f"  lambda            {arn}" for arn in result.functions.values()],
        f"  state machine     {result.state_machine_arn}",
        f"  threshold         {result.threshold}",
        "",
        "Run it:",
        f"  aws stepfunctions start-execution --state-machine-arn {result.state_machine_arn} \\",
        f"    --name run-$(date +%s) --input '{execution_input}'",
    ]
    healed = [c for c in result.changes if c.action == "heal"]
    if healed:
        lines[2:2] = ["Healed:", *[f"  {c.resource:<18}{c.name}  {c.detail}" for c in healed]]
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m scones.deploy", description=DESCRIPTION)
    parser.add_argument(
        "--plan", action="store_true", help="list what would change; change nothing"
    )
    parser.add_argument(
        "--push-image", action="store_true", help="build and push the serving image"
    )
    parser.add_argument("--skip-data", action="store_true", help="do not run the ETL")
    parser.add_argument(
        "--skip-functions",
        action="store_true",
        help="create or update no Lambda function (the state machine still names them)",
    )
    parser.add_argument("--epochs", type=int, help="training epochs (default: train.py's)")
    parser.add_argument("--model", dest="architecture", help="small_cnn (default) or resnet18")
    parser.add_argument("--rows-train", type=int, help="synthetic archive rows (default 50,000)")
    parser.add_argument("--rows-test", type=int, help="synthetic archive rows (default 10,000)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    options = DeployOptions(
        plan=args.plan,
        push_image=args.push_image,
        skip_data=args.skip_data,
        skip_functions=args.skip_functions,
        epochs=args.epochs,
        architecture=args.architecture,
        rows_train=args.rows_train,
        rows_test=args.rows_test,
    )
    deployed = run_deploy(options)
    if deployed is None:
        return 1
    settings, result = deployed
    if not options.plan:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        (settings.state_dir / "deploy.json").write_text(json.dumps(result.to_json(), indent=2))
        print(summary(result))
    else:
        pending = [c for c in result.changes if c.action in ("create", "update", "heal")]
        print(f"\nPlan: {len(pending)} change(s); run without --plan to apply.")
    return 0
