"""One place for the workflow's configuration: every knob, its environment variable and default.

The same values are used locally and on AWS; only the AWS profile chooses the target.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class Settings:
    """Workflow configuration, read from `SCONES_*` environment variables."""

    state_dir: Path = field(
        default_factory=lambda: Path(_env("SCONES_STATE_DIR", str(REPO_ROOT / ".state")))
    )
    region: str = field(default_factory=lambda: _env("AWS_DEFAULT_REGION", "us-east-1"))
    # Empty means "scones-unlimited-<account>-<region>", resolved at deploy time through STS.
    bucket: str = field(default_factory=lambda: _env("SCONES_BUCKET", ""))
    data_prefix: str = field(default_factory=lambda: _env("SCONES_DATA_PREFIX", "cifar100"))
    classes: str = field(default_factory=lambda: _env("SCONES_CLASSES", "bicycle,motorcycle"))
    # A local path or URL of the official cifar-100-python.tar.gz; empty means synthetic.
    cifar_source: str = field(default_factory=lambda: _env("SCONES_CIFAR_SOURCE", ""))
    endpoint_name: str = field(
        default_factory=lambda: _env("SCONES_ENDPOINT_NAME", "scones-image-classifier")
    )
    threshold: float = field(default_factory=lambda: float(_env("SCONES_THRESHOLD", "0.93")))
    min_val_accuracy: float = field(
        default_factory=lambda: float(_env("SCONES_MIN_VAL_ACCURACY", "0.80"))
    )

    def bucket_for(self, account_id: str) -> str:
        """The bucket name: configured, or derived from the account and region."""
        return self.bucket or f"scones-unlimited-{account_id}-{self.region}"


def load() -> Settings:
    """Read the configuration from the environment."""
    return Settings()
