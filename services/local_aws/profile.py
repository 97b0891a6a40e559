"""The `local` AWS profile: a config and credentials file that point plain boto3 at the local stack.

Nothing in the project passes `endpoint_url`; the profile does it (botocore's `endpoint_url`
and per-service `services` sections).
"""

from __future__ import annotations

from pathlib import Path

PROFILE = "local"
REGION = "us-east-1"
# Dummy keys, not secrets: the emulator treats them as the account's administrator (IAM policies
# are enforced only for STS role-session credentials, see iam_enforcement.py).
ACCESS_KEY_ID = "test"
SECRET_ACCESS_KEY = "test"


def write_profile(
    directory: Path,
    aws_endpoint: str,
    sagemaker_endpoint: str | None = None,
    region: str = REGION,
    profile: str = PROFILE,
) -> dict[str, str]:
    """Write `aws-config` and `aws-credentials` in `directory`; return the env selecting them."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "aws-config"
    credentials_path = directory / "aws-credentials"
    lines = [
        f"[profile {profile}]",
        f"region = {region}",
        "output = json",
        # StartSyncExecution/TestState would go to sync-127.0.0.1 (botocore's hostPrefix).
        "disable_host_prefix_injection = true",
        f"endpoint_url = {aws_endpoint}",
    ]
    if sagemaker_endpoint:
        lines += [f"services = {profile}-services", "", f"[services {profile}-services]"]
        for service in ("sagemaker", "sagemaker_runtime"):
            lines += [f"{service} =", f"  endpoint_url = {sagemaker_endpoint}"]
    config_path.write_text("\n".join(lines) + "\n")
    credentials_path.write_text(
        f"[{profile}]\naws_access_key_id = {ACCESS_KEY_ID}\n"
        f"aws_secret_access_key = {SECRET_ACCESS_KEY}\n"
    )
    return {
        "AWS_CONFIG_FILE": str(config_path),
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials_path),
        "AWS_PROFILE": profile,
    }
