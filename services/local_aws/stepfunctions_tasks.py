"""Lambda service errors seen by a Task whose Resource is the function ARN, named as on AWS.

With `"Resource": "arn:aws:states:::lambda:invoke"` moto names a Lambda service error
`Lambda.<Code>` (`Lambda.TooManyRequestsException` for a throttled function), as AWS does. With
the function ARN as Resource (the older form, still what many tutorials write) moto 5.2.5 named
every such error `Exception`, so the Retry the console writes for Lambda tasks
(`Lambda.ServiceException`, `Lambda.TooManyRequestsException`, ...) never matched. Here both
forms give the same name, with the same cause as the integration form.

A code that is not one of Invoke's modelled errors (AccessDeniedException when the execution
role may not invoke the function) is `Lambda.AWSLambdaException`, the generic exception of AWS's
Java SDK that Step Functions names it after, with the code in the cause.
"""

from __future__ import annotations

from typing import Any

from .patching import once


@once
def install() -> None:
    """Name Lambda service errors `Lambda.<Code>` for function-ARN tasks (idempotent)."""
    from botocore.exceptions import ClientError
    from moto.stepfunctions.parser.api import (
        HistoryEventType,
        LambdaFunctionFailedEventDetails,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import (
        CustomErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import (
        state_task_lambda,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_lambda,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails

    service_task = state_task_service_lambda.StateTaskServiceLambda
    name_of = service_task._error_cause_from_client_error
    from_error = state_task_lambda.StateTaskLambda._from_error
    modelled = _invoke_error_codes()

    def _error_cause(client_error: ClientError) -> tuple[str, str]:
        error, cause = name_of(client_error)
        if client_error.response["Error"]["Code"] not in modelled:
            error = "Lambda.AWSLambdaException"
        return error, cause

    def _from_error(self: Any, env: Any, ex: Exception) -> Any:
        if not isinstance(ex, ClientError):
            return from_error(self, env, ex)
        error, cause = _error_cause(ex)
        return FailureEvent(
            env=env,
            error_name=CustomErrorName(error),
            event_type=HistoryEventType.LambdaFunctionFailed,
            event_details=EventDetails(  # type: ignore[typeddict-item]
                lambdaFunctionFailedEventDetails=LambdaFunctionFailedEventDetails(
                    error=error, cause=cause
                )
            ),
        )

    state_task_lambda.StateTaskLambda._from_error = _from_error  # type: ignore[method-assign]
    service_task._error_cause_from_client_error = staticmethod(_error_cause)  # type: ignore[method-assign,assignment]


def _invoke_error_codes() -> frozenset[str]:
    """The error codes botocore's Lambda model declares for Invoke."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("lambda")
    return frozenset(shape.name for shape in model.operation_model("Invoke").error_shapes)
