"""SageMaker as the tests of its callers see it: a runtime stand-in and AWS's capture format.

`capture_files` writes a data capture as SageMaker leaves it in S3 (records of a two-class
model over several hours), for the readers of capture (`scones.monitoring`).

`SageMakerRuntimeStandIn` speaks InvokeEndpoint's wire format (rest-json, AWS error headers) so
that botocore's own parsing and error classes are exercised without a model behind it.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What a two-class model's endpoint answers (the stand-in's usual answer to the classifier).
MODEL_ANSWER = {"probabilities": [0.0125, 0.9875], "label": "motorcycle"}


class SageMakerRuntimeStandIn:
    """`POST /endpoints/{name}/invocations` on a free port, answering per endpoint name.

    Answers are `(status, headers, body)`; an unknown endpoint gets AWS's ValidationError.
    Every request is recorded as `(endpoint, content_type, accept, body)`.
    """

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[tuple[str, str, str, bytes]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                match = re.fullmatch(r"/endpoints/([^/]+)/invocations", self.path)
                name = match.group(1) if match else ""
                stand_in.requests.append(
                    (name, self.headers["Content-Type"], self.headers["Accept"], body)
                )
                status, headers, payload = stand_in.answers.get(name) or error_answer(
                    400, "ValidationError", f"Endpoint {name} of account 123456789012 not found."
                )
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(payload))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer_json(self, endpoint: str, value: Any) -> None:
        """Let `endpoint` answer 200 with `value` as JSON."""
        headers = {"Content-Type": "application/json", "x-Amzn-Invoked-Production-Variant": "v1"}
        self.answers[endpoint] = (200, headers, json.dumps(value).encode())

    def answer_error(
        self, endpoint: str, status: int, code: str, message: str, **fields: Any
    ) -> None:
        """Let `endpoint` answer with an AWS error."""
        self.answers[endpoint] = error_answer(status, code, message, **fields)

    def __enter__(self) -> SageMakerRuntimeStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def error_answer(
    status: int, code: str, message: str, **fields: Any
) -> tuple[int, dict[str, str], bytes]:
    """An AWS rest-json error response, shaped as SageMaker runtime sends it."""
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": f"{code}:http://internal"}
    return status, headers, json.dumps({"Message": message, **fields}).encode()


def aws_capture_record(
    image: bytes,
    output: Mapping[str, str],
    event_id: str,
    inference_id: str,
    inference_time: str,
) -> dict[str, Any]:
    """A data-capture record of an image request as SageMaker writes it, written out by hand.

    `output` is the endpointOutput's `data` and `encoding`; independent of sagemaker-local's own
    writer, so that tests of the writer and of the readers check against AWS's format.
    """
    return {
        "captureData": {
            "endpointInput": {
                "observedContentType": "image/png",
                "mode": "INPUT",
                "data": base64.b64encode(image).decode(),
                "encoding": "BASE64",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                **output,
            },
        },
        "eventMetadata": {
            "eventId": event_id,
            "inferenceId": inference_id,
            "inferenceTime": inference_time,
        },
        "eventVersion": "0",
    }


CAPTURE_ENDPOINT = "scones-monitoring-test"
CAPTURE_VARIANT = "AllTraffic"
CAPTURE_PREFIX = "datacapture/run-1"
CAPTURE_START = datetime(2026, 3, 4, 19, 5, 24, tzinfo=UTC)
CAPTURE_CLASSES = ("bicycle", "motorcycle")


@dataclass(frozen=True)
class Written:
    """What a test put into S3, to compare against what a reader read."""

    event_id: str
    time: datetime
    image: bytes
    probabilities: list[float]
    label: str


def tiny_png(seed: int) -> bytes:
    """An 8x8 PNG of one colour (its red from `seed`)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 40, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def capture_line(index: int, when: datetime, rng: random.Random) -> tuple[str, Written]:
    """One record exactly as SageMaker writes it (JSON output, or BASE64 when not listed)."""
    confidence = round(rng.uniform(0.5, 1.0), 4)
    winner = rng.randrange(2)
    probabilities = [confidence, round(1 - confidence, 4)][:: 1 if winner == 0 else -1]
    answer = json.dumps({"probabilities": probabilities, "label": CAPTURE_CLASSES[winner]})
    image = tiny_png(index)
    # Every third output as SageMaker stores a content type missing from JsonContentTypes.
    output = (
        {"data": base64.b64encode(answer.encode()).decode(), "encoding": "BASE64"}
        if index % 3 == 0
        else {"data": answer, "encoding": "JSON"}
    )
    event_id = str(uuid.uuid4())
    record = aws_capture_record(
        image, output, event_id, f"inference-{index}", when.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return json.dumps(record, separators=(",", ":")), Written(
        event_id, when, image, probabilities, CAPTURE_CLASSES[winner]
    )


def capture_files(
    prefix: str, count: int, lines_per_big_file: int = 5
) -> tuple[dict[str, bytes], list[Written]]:
    """`count` capture files from CAPTURE_START on, over hours, keyed as SageMaker keys them.

    Every 10th file holds `lines_per_big_file` records, the others one.
    """
    rng = random.Random(3)
    files: dict[str, bytes] = {}
    written: list[Written] = []
    when = CAPTURE_START
    index = 0
    for number in range(count):
        lines = []
        first = when
        for _ in range(lines_per_big_file if number % 10 == 0 else 1):
            line, record = capture_line(index, when, rng)
            lines.append(line)
            written.append(record)
            index += 1
            when += timedelta(seconds=3)
        name = f"{first:%M-%S}-{first.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
        key = f"{prefix}/{CAPTURE_ENDPOINT}/{CAPTURE_VARIANT}/{first:%Y/%m/%d/%H}/{name}"
        files[key] = ("\n".join(lines) + "\n").encode()
        when += timedelta(seconds=7)
    return files, written
