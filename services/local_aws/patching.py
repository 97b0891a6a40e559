"""Installing a patch on moto once: every parity module's `install` is idempotent this way."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable


def once(install: Callable[[], None]) -> Callable[[], None]:
    """Run `install` at most once, whichever thread calls first; later calls return at once.

    A failed install is not remembered as done: the next call tries again (and fails loudly).
    """
    lock = threading.Lock()
    done = False

    @functools.wraps(install)
    def install_once() -> None:
        nonlocal done
        with lock:
            if not done:
                install()
                done = True

    return install_once
