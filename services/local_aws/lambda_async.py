"""Asynchronous invocation (`InvocationType=Event`) as Lambda runs it: queue, retries, destinations.

An event is accepted at once (202) and run later. A function error is retried twice (or
`MaximumRetryAttempts` of the function's event invoke config), one minute before the second
attempt and two before the third, as AWS does; a throttled attempt goes back to the queue until
`MaximumEventAgeInSeconds`. Then the invocation record goes to the OnSuccess / OnFailure
destination (SQS, SNS or another function), and a failed event to the dead-letter queue.
LOCAL_AWS_LAMBDA_RETRY_DELAY_SCALE scales the delays (e.g. 0.01 in tests).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .lambda_concurrency import Throttled

if TYPE_CHECKING:
    from .lambda_runtime import LambdaRuntime
    from .lambda_spec import FunctionSpec, Outcome

log = logging.getLogger("local_aws.lambda")

RETRY_DELAYS_S = (60.0, 120.0)
THROTTLE_DELAY_S = 1.0
DEFAULT_MAX_AGE_S = 21600.0


def delay_scale() -> float:
    """The factor applied to AWS's retry delays (1.0: as AWS)."""
    return float(os.environ.get("LOCAL_AWS_LAMBDA_RETRY_DELAY_SCALE", "1.0"))


@dataclass
class _Event:
    fn: Any  # moto's LambdaFunction
    payload: bytes
    request_id: str
    accepted_at: float
    attempts: int = 0


class EventQueue:
    """Runs Event invocations in the background with AWS's retry and delivery rules."""

    def __init__(
        self,
        runtime: LambdaRuntime,
        spec_of: Callable[[Any], FunctionSpec],
        layer_zips: Callable[[Any], list[bytes]],
        workers: int = 4,
    ) -> None:
        self.runtime = runtime
        self.spec_of = spec_of
        self.layer_zips = layer_zips
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lambda-event")

    def submit(self, fn: Any, payload: bytes) -> str:
        """Accept one event; returns its request id."""
        event = _Event(fn, payload, str(uuid.uuid4()), time.time())
        self._pool.submit(self._attempt, event)
        return event.request_id

    def _later(self, delay_s: float, event: _Event) -> None:
        timer = threading.Timer(delay_s, lambda: self._pool.submit(self._attempt, event))
        timer.daemon = True
        timer.start()

    def _attempt(self, event: _Event) -> None:
        fn, config = event.fn, _invoke_config(event.fn)
        max_age = float(config.get("MaximumEventAgeInSeconds", DEFAULT_MAX_AGE_S))
        try:
            outcome = self.runtime.invoke(
                self.spec_of(fn),
                lambda: fn.code_bytes,
                event.payload,
                None,
                lambda: self.layer_zips(fn),
            )
        except Throttled:
            if time.time() - event.accepted_at + THROTTLE_DELAY_S < max_age:
                self._later(THROTTLE_DELAY_S * delay_scale(), event)
            else:
                self._deliver_failure(event, None, "EventAgeExceeded")
            return
        except Exception:
            log.exception("asynchronous invocation of %s failed", fn.function_name)
            return
        event.attempts += 1
        if outcome.function_error is None:
            self._deliver(event, outcome, "Success", config, "OnSuccess")
            return
        retries = int(config.get("MaximumRetryAttempts", len(RETRY_DELAYS_S)))
        if event.attempts <= retries:
            self._later(RETRY_DELAYS_S[event.attempts - 1] * delay_scale(), event)
            return
        self._deliver_failure(event, outcome, "RetriesExhausted")

    def _deliver_failure(self, event: _Event, outcome: Outcome | None, condition: str) -> None:
        self._deliver(event, outcome, condition, _invoke_config(event.fn), "OnFailure")
        target = (getattr(event.fn, "dead_letter_config", None) or {}).get("TargetArn")
        if target:
            message = outcome.payload.decode("utf-8", "replace") if outcome else condition
            attributes = {
                "RequestID": {"DataType": "String", "StringValue": event.request_id},
                "ErrorCode": {"DataType": "Number", "StringValue": "200"},
                "ErrorMessage": {"DataType": "String", "StringValue": message[:1024]},
            }
            _send(event.fn, target, event.payload.decode("utf-8", "replace"), attributes, self)

    def _deliver(
        self,
        event: _Event,
        outcome: Outcome | None,
        condition: str,
        config: dict[str, Any],
        kind: str,
    ) -> None:
        target = (config.get("DestinationConfig") or {}).get(kind, {}).get("Destination")
        if not target:
            return
        version = str(event.fn.version)
        record: dict[str, Any] = {
            "version": "1.0",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "requestContext": {
                "requestId": event.request_id,
                "functionArn": f"{event.fn.function_arn}:{version}",
                "condition": condition,
                "approximateInvokeCount": event.attempts,
            },
            "requestPayload": _json_or_text(event.payload),
        }
        if outcome is not None:
            record["responseContext"] = {"statusCode": 200, "executedVersion": version}
            if outcome.function_error:
                record["responseContext"]["functionError"] = outcome.function_error
            record["responsePayload"] = _json_or_text(outcome.payload)
        _send(event.fn, target, json.dumps(record), None, self)


def _invoke_config(fn: Any) -> dict[str, Any]:
    # moto appends on every put; the last one is the function's configuration.
    configs = getattr(fn, "event_invoke_config", None) or []
    return dict(configs[-1].config) if configs else {}


def _json_or_text(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def _send(
    fn: Any,
    target_arn: str,
    body: str,
    attributes: dict[str, Any] | None,
    queue: EventQueue,
) -> None:
    """Deliver to an SQS queue, an SNS topic or a function, by ARN (in the emulator's backends)."""
    parts = target_arn.split(":")
    service, region, account = parts[2], parts[3], parts[4]
    try:
        if service == "sqs":
            from moto.sqs.models import sqs_backends

            sqs_backends[account][region].send_message(parts[5], body, attributes or {})
        elif service == "sns":
            from moto.sns.models import sns_backends

            sns_backends[account][region].publish(body, arn=target_arn)
        elif service == "lambda":
            from moto.awslambda.models import lambda_backends

            target = lambda_backends[account][region].get_function(parts[6])
            queue.submit(target, body.encode())
        else:
            log.warning("destination %s of %s is not supported here", target_arn, fn.function_name)
    except Exception:
        log.exception("could not deliver to %s for %s", target_arn, fn.function_name)
