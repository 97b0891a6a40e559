"""What every deploy step shares: the effective settings, the clients, the change log, waits.

Each resource module (`storage`, `iam`, `images`, `training`, `hosting`, `functions`,
`state_machine`) exposes `ensure_*(ctx, result)`: it compares what exists with what is wanted,
acts only on a difference (never in `--plan`), records one `Change` line, and waits for the
resource's status where it has one, failing with the resource's own reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError, WaiterError

from scones.settings import Settings

VARIANT = "AllTraffic"


class DeployError(RuntimeError):
    """A deploy step failed; the message says which and why."""


@dataclass
class DeployOptions:
    """How to run one deploy; the `None` fields override the settings of the same name."""

    plan: bool = False
    push_image: bool = False
    skip_data: bool = False
    # Create or update no function (their ARNs are still computed for the state machine).
    skip_functions: bool = False
    # Print the training job's log lines (from CloudWatch Logs) while waiting for it.
    stream_logs: bool = True
    # What the CLI and the tests' small deploys change; every other knob is the settings' own.
    epochs: int | None = None
    architecture: str | None = None
    rows_train: int | None = None
    rows_test: int | None = None
    training_image: str | None = None
    waiter_delay_s: int | None = None

    def applied_to(self, settings: Settings) -> Settings:
        """The settings with this run's overrides applied."""
        overrides = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.default is None and getattr(self, f.name) is not None
        }
        return replace(settings, **overrides)


@dataclass
class Change:
    """One line of the deploy's account: what was (or would be) done to which resource."""

    resource: str
    name: str
    action: str  # create | update | heal | unchanged | skip
    detail: str = ""


@dataclass
class DeployResult:
    """Names and ARNs of everything deployed."""

    account_id: str
    region: str
    bucket: str
    data_prefix: str
    roles: dict[str, str] = field(default_factory=dict)
    training_job: str = ""
    model_artifact: str = ""
    serving_image: str = ""
    training_image: str = ""
    model_name: str = ""
    endpoint_config: str = ""
    endpoint: str = ""
    capture_uri: str = ""
    functions: dict[str, str] = field(default_factory=dict)
    state_machine_arn: str = ""
    threshold: float = 0.0
    changes: list[Change] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was created, updated or healed."""
        return any(c.action in ("create", "update", "heal") for c in self.changes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (written to the state folder for later steps)."""
        data = {k: v for k, v in self.__dict__.items() if k != "changes"}
        data["changes"] = [c.__dict__ for c in self.changes]
        return data


ImagePusher = Callable[[str, Path], None]


@dataclass
class DeployContext:
    """The effective settings, the run's options and the clients every step uses."""

    settings: Settings
    options: DeployOptions
    image_pusher: ImagePusher
    echo: Callable[[str], None] = print
    _clients: dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """The prefix of every resource name."""
        return self.settings.name_prefix

    def client(self, name: str) -> Any:
        """A plain boto3 client: the profile decides where it goes."""
        if name not in self._clients:
            self._clients[name] = boto3.client(name, region_name=self.settings.region)
        return self._clients[name]

    def note(
        self, result: DeployResult, resource: str, name: str, action: str, detail: str = ""
    ) -> None:
        """Record and print one change line."""
        result.changes.append(Change(resource, name, action, detail))
        verb = {"create": "+", "update": "~", "heal": "!", "unchanged": "=", "skip": "-"}[action]
        planned = " (plan)" if self.options.plan and action in ("create", "update", "heal") else ""
        self.echo(f"  {verb} {resource:<18} {name}{planned}{'  ' + detail if detail else ''}")

    def wait(
        self,
        service: str,
        waiter: str,
        what: str,
        reason: Callable[[], str],
        max_attempts: int = 900,
        **kwargs: Any,
    ) -> None:
        """Run a boto3 waiter; on failure raise DeployError with the resource's own reason."""
        try:
            self.client(service).get_waiter(waiter).wait(
                **kwargs,
                WaiterConfig={"Delay": self.settings.waiter_delay_s, "MaxAttempts": max_attempts},
            )
        except WaiterError as error:
            try:
                why = reason()
            except ClientError as described:
                why = str(described)
            raise DeployError(f"{what}: {why or error}") from error


def digest(*parts: bytes | str) -> str:
    """SHA-256 over the parts, each one terminated so that ("ab", "c") != ("a", "bc")."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def exists(describe: Callable[[], Any]) -> bool:
    """Whether a Describe/Get call finds its resource."""
    try:
        describe()
        return True
    except ClientError:
        return False


def object_exists(ctx: DeployContext, bucket: str, key: str) -> bool:
    """Whether s3://bucket/key is there (the artefacts a heal looks for)."""
    return exists(lambda: ctx.client("s3").head_object(Bucket=bucket, Key=key))


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` as (bucket, key)."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key
