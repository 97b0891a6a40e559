"""The state machine: the repository's ASL with only the function placeholders replaced."""

from __future__ import annotations

from botocore.exceptions import ClientError

from scones.deploy.context import DeployContext, DeployError, DeployResult
from scones.workflow_functions import WORKFLOW_FUNCTIONS
from statemachine.definition import render_for_functions


def ensure_state_machine(ctx: DeployContext, result: DeployResult) -> None:
    """Create the state machine, or update its definition or role when either differs."""
    sfn = ctx.client("stepfunctions")
    definition = render_for_functions(
        {function.folder: result.functions[function.suffix] for function in WORKFLOW_FUNCTIONS}
    )
    name = f"{ctx.prefix}-image-classification"
    role = result.roles[f"{ctx.prefix}-states"]
    arn = f"arn:aws:states:{result.region}:{result.account_id}:stateMachine:{name}"
    try:
        current = sfn.describe_state_machine(stateMachineArn=arn)
    except ClientError:
        current = None
    result.state_machine_arn = arn
    if current is not None and current.get("status", "ACTIVE") != "ACTIVE":
        # A machine being deleted keeps its name until it is gone; AWS refuses to re-create it.
        raise DeployError(f"state machine {name} is {current['status']}: deploy again once gone")
    if current is None:
        if not ctx.options.plan:
            result.state_machine_arn = sfn.create_state_machine(
                name=name, definition=definition, roleArn=role, type="STANDARD"
            )["stateMachineArn"]
        ctx.note(result, "state machine", name, "create")
    elif current["definition"] != definition or current["roleArn"] != role:
        if not ctx.options.plan:
            sfn.update_state_machine(stateMachineArn=arn, definition=definition, roleArn=role)
        ctx.note(result, "state machine", name, "update")
    else:
        ctx.note(result, "state machine", name, "unchanged")
