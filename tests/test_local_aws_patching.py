"""`once`: the parity modules' installers run their patch at most once, whoever calls."""

from __future__ import annotations

import threading

import pytest

from services.local_aws.patching import once


def test_the_patch_runs_once_however_many_threads_install_it() -> None:
    calls: list[int] = []
    gate = threading.Barrier(8)

    @once
    def install() -> None:
        """Patch something."""
        calls.append(1)

    def racer() -> None:
        gate.wait()
        install()

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    install()
    assert calls == [1]
    assert install.__doc__ == "Patch something."


def test_a_failed_install_is_tried_again() -> None:
    attempts: list[int] = []

    @once
    def install() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("moto moved")

    with pytest.raises(RuntimeError, match="moto moved"):
        install()
    install()
    install()
    assert len(attempts) == 2
