"""Every knob of the project in one table: its variable, default and meaning, read once.

`KNOBS` is the only place a default lives. The knobs the application reads become fields of
`Settings` (`load()` reads the environment once); the others are read by the program that owns
them (a service reads its own environment, the Makefile its own variables), and the table names
that file so a test can check it still reads the variable. The README's configuration table is
generated from `KNOBS` (`python -m scones.settings`) and a test fails if the two disagree.

The same values are used locally and on AWS; only the AWS profile chooses the target.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Knob:
    """One configuration variable: where it is read, its default and what it does."""

    variable: str
    default: str
    doc: str
    # The file that reads the variable when `Settings` does not (relative to the repo root).
    read_by: str = "scones/settings.py"
    # What the README shows as the default when the real one is computed (e.g. from the account).
    shown_default: str | None = None

    @property
    def readme_default(self) -> str:
        """The default as the README's table shows it."""
        if self.shown_default is not None:
            return self.shown_default
        return f"`{self.default}`" if self.default else ""


# Where a knob is read when `Settings` does not read it (`Knob.read_by`).
EMULATOR = "services/local_aws"
SAGEMAKER_LOCAL = "services/sagemaker_local"
MODEL_SERVER = "services/model_server"
BROWSER_GUARD = "services/browser_guard.py"
LOCALSTACK_HOST = "services/localstack_host"
MAKEFILE = "Makefile"

# One knob a line, in the order of the README table.
KNOBS: tuple[Knob, ...] = (
    Knob("BACKEND", "embedded", "`embedded` (no Docker), `docker` (Compose: LocalStack + sagemaker-local) or `localstack-host` (LocalStack 4.14.0 as a host process beside sagemaker-local, no Docker; its Lambda does not run, so the deploy skips functions)"),
    Knob("LOCAL_AWS_PORT", "4566", "port of the embedded AWS emulator"),
    Knob("SAGEMAKER_LOCAL_PORT", "4570", "port of sagemaker-local (control plane and runtime)"),
    Knob("LOCAL_AWS_LAMBDA_CONCURRENCY", "16", "most concurrent executions (warm workers) per function", read_by=EMULATOR),
    Knob("LOCAL_AWS_LAMBDA_IDLE_TIMEOUT", "300", "seconds an idle Lambda environment is kept warm (a laptop's default; AWS keeps them ~5-15 min; provisioned ones stay)", read_by=EMULATOR),
    Knob("LOCAL_AWS_LAMBDA_ISOLATION", "1", "`0` lets Lambda code import the whole venv (AWS offers only boto3)", read_by=EMULATOR),
    Knob("LOCAL_AWS_LOG_LEVEL", "INFO", "emulator log level", read_by=EMULATOR),
    Knob("LOCAL_AWS_SFN_SPEEDUPS", "1", "`0`: moto's Step Functions interpreter exactly as shipped", read_by=EMULATOR),
    Knob("LOCAL_AWS_LAMBDA_PENDING_S", "0.2", "seconds a new function stays `Pending`, as on AWS (`0`: Active at once)", read_by=EMULATOR),
    Knob("LOCAL_AWS_SFN_TIME_SCALE", "1", "factor on Step Functions Wait/Retry intervals", read_by=EMULATOR),
    Knob("LOCAL_AWS_PERSIST", "1", "`0`: the emulator keeps its state in memory only (lost at `make down`)", read_by=EMULATOR),
    Knob("LOCAL_AWS_IAM_ENFORCE", "1", "`0`: IAM policies are not enforced for calls made with role credentials", read_by=EMULATOR),
    Knob("LOCAL_AWS_LAMBDA_ACCOUNT_CONCURRENCY", "64", "account-level Lambda concurrency limit (beyond it: `TooManyRequestsException`)", read_by=EMULATOR),
    Knob("LOCAL_AWS_LAMBDA_MAX_ENVIRONMENTS", "64", "most warm Lambda environments in total (least recently used idle ones reaped)", read_by=EMULATOR),
    Knob("LOCAL_AWS_LAMBDA_FORK_SERVER", "1", "`0`: start each Lambda environment as a fresh interpreter instead of a fork", read_by=EMULATOR),
    Knob("LOCAL_AWS_LAMBDA_RETRY_DELAY_SCALE", "1.0", "factor on the 1 and 2 minute retry delays of `InvocationType=Event`", read_by=EMULATOR),
    Knob("SCONES_ALLOWED_ORIGINS", "", "browser origins allowed to call the local services (comma-separated; none by default)", read_by=BROWSER_GUARD),
    Knob("SCONES_ALLOWED_HOSTS", "", "extra Host names the local services answer (beyond localhost, 127.0.0.1, [::1])", read_by=BROWSER_GUARD),
    Knob("SAGEMAKER_LOCAL_ACCOUNT_ID", "", "account of sagemaker-local when STS cannot be asked (else STS decides)", read_by=SAGEMAKER_LOCAL, shown_default="(from STS)"),
    Knob("SAGEMAKER_LOCAL_STOP_GRACE_S", "120", "seconds between SIGTERM and SIGKILL when a training job is stopped (AWS: 120)", read_by=SAGEMAKER_LOCAL),
    Knob("SAGEMAKER_LOCAL_CAPTURE_SYNC_SECONDS", "0.1", "most seconds a captured record waits for fdatasync (`0`: no sync)", read_by=SAGEMAKER_LOCAL),
    Knob("MODEL_SERVER_MAX_QUEUE", "256", "requests the model server queues before answering 503", read_by=MODEL_SERVER),
    Knob("MODEL_SERVER_MAX_IMAGE_PIXELS", "4194304", "largest image (pixels) the model server decodes; larger: 400", read_by=MODEL_SERVER),
    Knob("SCONES_LOCALSTACK_PYTHON", "", "Python >= 3.12 for `BACKEND=localstack-host` (default: the first found)", read_by=LOCALSTACK_HOST, shown_default="(python3.13/3.12, pyenv)"),
    Knob("SCONES_STATE_DIR", ".state", "everything a run writes (git-ignored)"),
    Knob("AWS_DEFAULT_REGION", "us-east-1", "region of the deployment"),
    Knob("SCONES_BUCKET", "", "the workflow's bucket", shown_default="`scones-unlimited-<account>-<region>`"),
    Knob("SCONES_DATA_PREFIX", "cifar100", "S3 prefix of the staged dataset"),
    Knob("SCONES_CLASSES", "bicycle,motorcycle", "class subset (`all` = 100 classes)"),
    Knob("SCONES_CIFAR_SOURCE", "", "path or URL of the official `cifar-100-python.tar.gz`", shown_default="(synthetic)"),
    Knob("SCONES_ENDPOINT_NAME", "scones-image-classifier", "SageMaker endpoint name"),
    Knob("SCONES_THRESHOLD", "0.93", "confidence threshold of the filter Lambda"),
    Knob("SCONES_MIN_VAL_ACCURACY", "0.80", "training's validation-accuracy gate"),
    Knob("SCONES_NAME_PREFIX", "scones", "prefix of every resource name"),
    Knob("SCONES_MODEL", "small_cnn", "architecture to train (`resnet18`)"),
    Knob("SCONES_EPOCHS", "0", "training epochs (`0`: train.py's 12)"),
    Knob("SCONES_SEED", "0", "seed of the synthetic archive and the training run"),
    Knob("SCONES_ROWS_TRAIN", "0", "synthetic archive training rows (`0`: 50000)"),
    Knob("SCONES_ROWS_TEST", "0", "synthetic archive test rows (`0`: 10000)"),
    Knob("SCONES_LAMBDA_RUNTIME", "python3.12", "declared Lambda runtime"),
    Knob("SCONES_PROVISIONED_CONCURRENCY", "auto", "provisioned environments per workflow function, behind its `live` alias: `auto` = 8 on the local stack (profile `local`), 0 elsewhere (on AWS it is billed while configured); a number sets it on any target"),
    Knob("SCONES_TRAINING_INSTANCE", "ml.m5.xlarge", "training instance type"),
    Knob("SCONES_ENDPOINT_INSTANCE", "ml.m5.large", "endpoint instance type"),
    Knob("SCONES_TRAINING_IMAGE", "", "training image URI override", shown_default="(image_uris)"),
    Knob("SCONES_SERVING_IMAGE", "", "serving image URI override", shown_default="(content-addressed ECR URI)"),
    Knob("SCONES_CAPTURE_PERCENTAGE", "100", "data capture sampling percentage"),
    Knob("SCONES_WAITER_DELAY", "2", "seconds between waiter polls during the deploy"),
    Knob("SCONES_CASES", "50", "test cases run by `make demo`"),
    Knob("DEPLOY", "1", "`make up DEPLOY=0` starts the stack without deploying", read_by=MAKEFILE),
    Knob("PYTEST_ARGS", "", "extra pytest options for `make test`", read_by=MAKEFILE),
    Knob("BENCHMARKS", "", "which benchmarks `make bench` runs", read_by=MAKEFILE, shown_default="all four"),
)  # fmt: skip
_BY_VARIABLE = {knob.variable: knob for knob in KNOBS}


class SettingsError(ValueError):
    """A configuration variable holds a value of the wrong kind."""


def _text(variable: str) -> str:
    knob = _BY_VARIABLE[variable]
    return os.environ.get(variable, "").strip() or knob.default


def _number(variable: str, kind: type[int] | type[float], described: str) -> Any:
    value = _text(variable)
    try:
        return kind(value)
    except ValueError:
        raise SettingsError(f"{variable} must be {described}, got {value!r}") from None


_int = partial(_number, kind=int, described="a whole number")
_float = partial(_number, kind=float, described="a number")


def _path(variable: str) -> Path:
    # A configured path is taken as given; the default lives in the repository.
    value = os.environ.get(variable, "").strip()
    return Path(value) if value else REPO_ROOT / _BY_VARIABLE[variable].default


def _knob(reader, variable: str):  # type: ignore[no-untyped-def]
    return field(default_factory=lambda: reader(variable), metadata={"variable": variable})


@dataclass(frozen=True)
class Settings:
    """The application's configuration; each field is one `KNOBS` entry (see `variable_of`)."""

    state_dir: Path = _knob(_path, "SCONES_STATE_DIR")
    region: str = _knob(_text, "AWS_DEFAULT_REGION")
    # Empty means "scones-unlimited-<account>-<region>", resolved at deploy time through STS.
    bucket: str = _knob(_text, "SCONES_BUCKET")
    data_prefix: str = _knob(_text, "SCONES_DATA_PREFIX")
    classes: str = _knob(_text, "SCONES_CLASSES")
    # A local path or URL of the official cifar-100-python.tar.gz; empty means synthetic.
    cifar_source: str = _knob(_text, "SCONES_CIFAR_SOURCE")
    endpoint_name: str = _knob(_text, "SCONES_ENDPOINT_NAME")
    threshold: float = _knob(_float, "SCONES_THRESHOLD")
    min_val_accuracy: float = _knob(_float, "SCONES_MIN_VAL_ACCURACY")
    name_prefix: str = _knob(_text, "SCONES_NAME_PREFIX")
    architecture: str = _knob(_text, "SCONES_MODEL")
    epochs: int = _knob(_int, "SCONES_EPOCHS")
    seed: int = _knob(_int, "SCONES_SEED")
    rows_train: int = _knob(_int, "SCONES_ROWS_TRAIN")
    rows_test: int = _knob(_int, "SCONES_ROWS_TEST")
    lambda_runtime: str = _knob(_text, "SCONES_LAMBDA_RUNTIME")
    # "auto" or a whole number; resolved by the deploy's functions step (it knows the target).
    provisioned_concurrency: str = _knob(_text, "SCONES_PROVISIONED_CONCURRENCY")
    training_instance: str = _knob(_text, "SCONES_TRAINING_INSTANCE")
    endpoint_instance: str = _knob(_text, "SCONES_ENDPOINT_INSTANCE")
    training_image: str = _knob(_text, "SCONES_TRAINING_IMAGE")
    serving_image: str = _knob(_text, "SCONES_SERVING_IMAGE")
    capture_percentage: int = _knob(_int, "SCONES_CAPTURE_PERCENTAGE")
    waiter_delay_s: int = _knob(_int, "SCONES_WAITER_DELAY")
    cases: int = _knob(_int, "SCONES_CASES")
    backend: str = _knob(_text, "BACKEND")
    local_aws_port: int = _knob(_int, "LOCAL_AWS_PORT")
    sagemaker_local_port: int = _knob(_int, "SAGEMAKER_LOCAL_PORT")

    def bucket_for(self, account_id: str) -> str:
        """The bucket name: configured, or derived from the account and region."""
        return self.bucket or f"scones-unlimited-{account_id}-{self.region}"


def variable_of(field_name: str) -> str:
    """The environment variable a `Settings` field is read from."""
    return str(Settings.__dataclass_fields__[field_name].metadata["variable"])


def load() -> Settings:
    """Read the configuration from the environment (once per call)."""
    return Settings()


def readme_table() -> str:
    """The README's configuration table, generated from `KNOBS`."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k.variable}` | {k.readme_default} | {k.doc} |" for k in KNOBS]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(readme_table() + "\n")
