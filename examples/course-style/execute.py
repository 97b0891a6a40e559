"""Execute a notebook headless with nbclient and write it back with its outputs.

Runs in the SDK v2 environment (`.venv-sdkv2`), as the notebook instance's Jupyter would, from
inside the instance's mount namespace that `run_notebook.py` prepares. The kernel starts with the
notebook's folder as its working directory. Exit status 1 when a cell fails (the partly executed
notebook is still written, with the error in the failing cell's outputs).

    python execute.py NOTEBOOK OUTPUT [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    """Execute NOTEBOOK, write OUTPUT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    notebook = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=args.timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(args.notebook.parent.resolve())}},
    )
    try:
        client.execute()
        status = 0
    except CellExecutionError as exc:
        print(f"notebook failed: {exc}", file=sys.stderr)
        status = 1
    nbformat.write(notebook, args.output)
    return status


if __name__ == "__main__":
    sys.exit(main())
