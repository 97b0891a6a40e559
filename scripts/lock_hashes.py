"""Write sha256 hashes into requirements.lock, so `make venv` installs with --require-hashes.

Usage: `python -m scripts.lock_hashes [requirements.lock ...]` (the Makefile's `make lock`).

Each pin gets the hash of every file PyPI serves for that exact version (wheels for every platform
and the sdist, so macOS and Arm laptops install from the same lock), read from PyPI's JSON simple
API (PEP 691), plus the hash of the file pip actually picks on this machine (`pip install
--dry-run --report`), which covers a configured local mirror. Standard library and `packaging` only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

INDEX = "https://pypi.org/simple"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)")


def read_pins(lock: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The lock's leading comment lines and its (name, version) pins, hashes dropped."""
    header: list[str] = []
    pins: list[tuple[str, str]] = []
    for line in lock.read_text().splitlines():
        stripped = line.strip()
        if not pins and stripped.startswith("#"):
            header.append(line)
        elif match := PIN.match(stripped):
            pins.append((match.group(1), match.group(2)))
    return header, pins


def index_hashes(name: str, version: str) -> set[str]:
    """sha256 of every file the index serves for name==version."""
    request = urllib.request.Request(
        f"{INDEX}/{canonicalize_name(name)}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    wanted = Version(version)
    hashes = set()
    for entry in files:
        filename = entry["filename"]
        try:
            if filename.endswith(".whl"):
                found = parse_wheel_filename(filename)[1]
            elif filename.endswith((".tar.gz", ".zip")):
                found = parse_sdist_filename(filename)[1]
            else:
                continue
        except ValueError:
            continue
        if found == wanted and "sha256" in entry.get("hashes", {}):
            hashes.add(entry["hashes"]["sha256"])
    return hashes


def picked_hashes(pins: list[tuple[str, str]]) -> dict[str, set[str]]:
    """sha256 of the file pip picks here for each pin (from `pip install --dry-run --report`)."""
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder, "pins.txt")
        plain.write_text("".join(f"{n}=={v}\n" for n, v in pins))
        report = Path(folder, "report.json")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
             "--no-deps", "--quiet", "--report", str(report), "-r", str(plain)],
            check=True,
        )  # fmt: skip
        installs = json.loads(report.read_text())["install"]
    picked: dict[str, set[str]] = {}
    for item in installs:
        digest = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        if digest:
            picked.setdefault(canonicalize_name(item["metadata"]["name"]), set()).add(digest)
    return picked


def write_lock(lock: Path) -> int:
    """Rewrite one lock file with hashes; returns the number of pins."""
    header, pins = read_pins(lock)
    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(lambda pin: index_hashes(*pin), pins))
    picked = picked_hashes(pins)
    lines = list(header)
    for (name, version), hashes in zip(pins, served, strict=True):
        hashes |= picked.get(canonicalize_name(name), set())
        if not hashes:
            raise SystemExit(f"{lock}: no file found for {name}=={version}")
        lines.append(f"{name}=={version} \\")
        ordered = sorted(hashes)
        for i, digest in enumerate(ordered):
            lines.append(f"    --hash=sha256:{digest}" + (" \\" if i < len(ordered) - 1 else ""))
    lock.write_text("\n".join(lines) + "\n")
    return len(pins)


def main(argv: list[str] | None = None) -> int:
    """Hash every pin of the given lock files (default: requirements.lock)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("locks", nargs="*", type=Path, default=[Path("requirements.lock")])
    for lock in parser.parse_args(argv).locks:
        print(f"{lock}: {write_lock(lock)} pins hashed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
