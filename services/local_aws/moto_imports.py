"""moto packages imported without the `__init__` that loads far more than their callers use.

moto's ASL parser (Step Functions) imports `moto.batch.utils` for one enum, the Batch task's job
states. `moto/batch/__init__.py` imports `moto.batch.models`, which imports all of `moto.ec2`
with its instance-type and AMI data: importing the parser took 2.2-3.3 s and +111 MB RSS with
it, 0.18-0.47 s and +13 MB without it (measured here, loaded machine). The package is registered
without running its `__init__`; what the `__init__` would have exported (`batch_backends`, which
moto's dispatcher asks for on a Batch request) is imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

# Package -> the module whose names its __init__ re-exports.
DEFERRED = {"moto.batch": "moto.batch.models"}


def defer_package_init(package: str, exports_from: str) -> bool:
    """Register `package` with its `__init__` not run; its exports load on first access.

    False when the package is imported already (nothing to save) or cannot be found.
    """
    if package in sys.modules:
        return False
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        return False
    module = importlib.util.module_from_spec(spec)  # __path__ set: submodules import as usual

    def __getattr__(name: str) -> Any:  # PEP 562: only for names not set on the module
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(importlib.import_module(exports_from), name)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[package] = module
    parent, _, child = package.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return True


def install() -> None:
    """Defer every package in `DEFERRED` (before moto's Step Functions parser is imported)."""
    for package, exports_from in DEFERRED.items():
        defer_package_init(package, exports_from)
