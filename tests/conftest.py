"""Shared fixtures: real local services on free ports, in temporary folders, always stopped.

The harness itself lives in `scones.testing` and `scones.stack` (the benchmarks use it too);
the names below are the ones the test modules import.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scones.settings import REPO_ROOT
from scones.stack import READY_TIMEOUT_S as STARTUP_TIMEOUT_S
from scones.stack import free_port
from scones.stack import stop_process_group as stop_process
from scones.stack import wait_for_health as wait_until_ready
from scones.testing import (
    LocalAws,
    LocalStack,
    reset_boto3,
    selected_profile,
    start_local_aws,
    start_local_stack,
)

# Helpers that test modules import and register as plugins: their asserts are rewritten too.
pytest.register_assert_rewrite("tests.sagemaker_local_harness")

__all__ = [
    "REPO_ROOT",
    "STARTUP_TIMEOUT_S",
    "LocalAws",
    "LocalStack",
    "free_port",
    "reset_boto3",
    "selected_profile",
    "start_local_aws",
    "start_local_stack",
    "stop_process",
    "wait_until_ready",
]


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    """A real emulator for the whole session, with the `local` profile selected in os.environ."""
    emulator = start_local_aws(tmp_path_factory.mktemp("local_aws"))
    try:
        with selected_profile(emulator.env, hide=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")):
            yield emulator
    finally:
        stop_process(emulator.process)


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The embedded stack for one test module, its profile selected in os.environ."""
    stack = start_local_stack(tmp_path_factory.mktemp("stack"))
    try:
        with selected_profile(stack.env):
            yield stack
    finally:
        stack.stop()
