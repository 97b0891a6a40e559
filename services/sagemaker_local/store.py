"""Persistence of sagemaker-local's resources as JSON files under the state folder.

One file per resource (`<state>/store/<kind>/<name>.json`), replaced atomically on every change,
so that jobs, models, endpoint configs and endpoints survive a restart of the process.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("training-jobs", "models", "endpoint-configs", "endpoints", "notebook-instances")


class JsonStore:
    """Resource records of each kind, kept as JSON files."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "store"
        for kind in KINDS:
            (self.root / kind).mkdir(parents=True, exist_ok=True)

    def _path(self, kind: str, name: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        return self.root / kind / f"{name}.json"

    def put(self, kind: str, name: str, record: dict[str, Any]) -> None:
        """Write one record atomically (write a temporary file, then rename it)."""
        path = self._path(kind, name)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1, sort_keys=True, default=str)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, kind: str, name: str) -> None:
        """Forget one record."""
        self._path(kind, name).unlink(missing_ok=True)

    def load_all(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every record of a kind; unreadable files are logged and skipped."""
        records: dict[str, dict[str, Any]] = {}
        for path in sorted((self.root / kind).glob("*.json")):
            try:
                records[path.stem] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable state file %s: %s", path, exc)
        return records
