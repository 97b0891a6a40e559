"""Which AWS image a URI names, from the image data the SageMaker Python SDK ships.

`image_uris.json` (beside this file) is derived, not written by hand: `derive_table()` reads the
SDK's `image_uri_config/*.json` (the data behind `sagemaker.image_uris.retrieve`) and resolves each
region's ECR host with the SDK's own endpoint resolver. It is kept as a file so sagemaker-local
needs no SDK at run time (the compose image has none); `tests/test_training_images.py` fails when
it disagrees with the installed SDK. Refresh after an SDK upgrade:

    .venv/bin/python -m services.sagemaker_local.algorithms.images --refresh
"""

from __future__ import annotations

import argparse
import enum
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("image_uris.json")
# AWS documents both tags for the built-in algorithms; the SDK's data lists only the versions.
BUILTIN_EXTRA_TAGS = ("latest",)
# The table's families: name -> (SDK config file, scope, whether any tag is accepted).
FAMILIES: dict[str, tuple[str, str, bool]] = {
    "image-classification": ("image-classification.json", "training", False),
    "pytorch": ("pytorch.json", "training", True),
}
_URI = re.compile(
    r"^(?P<host>[0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.[a-z0-9.-]+)/(?P<repo>[a-z0-9._/-]+)"
    r"(?::(?P<tag>[A-Za-z0-9._-]{1,128}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


class ImageKind(enum.Enum):
    """What runs a training job, chosen by its image."""

    IMAGE_CLASSIFICATION = "image-classification"  # the built-in algorithm
    PYTORCH = "pytorch"  # the framework image: runs the user's entry point
    CONTAINER = "container"  # anything else: needs a container engine


@dataclass(frozen=True)
class ImageRef:
    """A parsed ECR image URI."""

    host: str
    repository: str
    tag: str | None
    digest: str | None


def parse_image_uri(uri: str) -> ImageRef | None:
    """The parts of an ECR image URI, or None for any other reference."""
    match = _URI.match(uri.strip())
    if match is None:
        return None
    return ImageRef(match["host"], match["repo"], match["tag"], match["digest"])


@functools.cache
def load_table(path: Path = TABLE_PATH) -> dict[str, Any]:
    """The derived table of AWS image families."""
    return dict(json.loads(path.read_text(encoding="utf-8")))


def classify_image(uri: str, table: dict[str, Any] | None = None) -> ImageKind:
    """The kind of a training image URI (an unknown URI is a plain container)."""
    ref = parse_image_uri(uri)
    if ref is None:
        return ImageKind.CONTAINER
    families = (table or load_table())["families"]
    for name, family in families.items():
        if ref.repository not in family["repositories"]:
            continue
        if ref.host not in family["hosts"]:
            continue
        tags = family["tags"]
        if tags is not None and ref.digest is None and (ref.tag or "latest") not in tags:
            continue
        return ImageKind(name)
    return ImageKind.CONTAINER


def derive_table() -> dict[str, Any]:
    """Build the table from the installed SageMaker SDK (needs `sagemaker-core`)."""
    from importlib.metadata import version

    from sagemaker.core import common_utils, image_uris

    resolver = common_utils._botocore_resolver()
    config_dir = Path(image_uris.__file__).with_name("image_uri_config")
    families: dict[str, Any] = {}
    for name, (filename, scope, any_tag) in FAMILIES.items():
        config = json.loads((config_dir / filename).read_text(encoding="utf-8"))
        if scope in config:  # framework files hold one section per scope
            config = config[scope]
        hosts: set[str] = set()
        repositories: set[str] = set()
        for version_config in config["versions"].values():
            repositories.add(version_config["repository"])
            for region, account in version_config["registries"].items():
                endpoint = resolver.construct_endpoint("ecr", region) or {
                    "hostname": f"ecr.{region}.amazonaws.com"  # as the SDK does for new regions
                }
                hosts.add(f"{account}.dkr.{endpoint['hostname']}")
        tags = None if any_tag else sorted({*config["versions"], *BUILTIN_EXTRA_TAGS})
        families[name] = {
            "sdk_file": filename,
            "scope": scope,
            "repositories": sorted(repositories),
            "tags": tags,
            "hosts": sorted(hosts),
        }
    return {"source": f"sagemaker-core {version('sagemaker-core')}", "families": families}


def main(argv: list[str] | None = None) -> int:
    """Print the derived table, or rewrite `image_uris.json` with --refresh."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refresh", action="store_true", help=f"rewrite {TABLE_PATH.name}")
    args = parser.parse_args(argv)
    text = json.dumps(derive_table(), indent=1, sort_keys=True) + "\n"
    if args.refresh:
        TABLE_PATH.write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
