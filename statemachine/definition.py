"""Load `image_classification.asl.json` and substitute its `${Name}` placeholders.

Substitution is textual, so the deployed definition is the repository's file byte for byte except
for the placeholders; the result is checked to be JSON before it is returned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from scones.workflow_functions import WORKFLOW_FUNCTIONS

ASL_PATH = Path(__file__).resolve().parent / "image_classification.asl.json"
# The placeholder each Lambda function's ARN fills (function folder -> name), from the one table.
FUNCTION_PLACEHOLDERS = {function.folder: function.placeholder for function in WORKFLOW_FUNCTIONS}
PLACEHOLDER = re.compile(r"\$\{([A-Za-z][A-Za-z0-9_]*)\}")
# Anything that starts like a placeholder; compared with PLACEHOLDER to catch malformed ones.
PLACEHOLDER_START = re.compile(r"\$\{")


class PlaceholderError(ValueError):
    """A placeholder has no value, a value has no placeholder, or a placeholder is malformed."""


def load_template(path: Path = ASL_PATH) -> str:
    """The ASL text with its placeholders, as stored in the repository."""
    return path.read_text(encoding="utf-8")


def placeholders(template: str) -> set[str]:
    """The names of the template's `${Name}` placeholders."""
    found = PLACEHOLDER.findall(template)
    if len(PLACEHOLDER_START.findall(template)) != len(found):
        raise PlaceholderError("the template holds a malformed '${' placeholder")
    return set(found)


def render(values: Mapping[str, str], template: str | None = None) -> str:
    """The template with every placeholder replaced by its value (JSON-escaped)."""
    text = load_template() if template is None else template
    expected = placeholders(text)
    missing = sorted(expected - set(values))
    unknown = sorted(set(values) - expected)
    if missing or unknown:
        raise PlaceholderError(f"placeholders without a value: {missing}; unknown names: {unknown}")
    for name, value in values.items():
        if not isinstance(value, str) or not value:
            raise PlaceholderError(f"the value of ${{{name}}} must be a non-empty string")
    # json.dumps escapes quotes and backslashes; [1:-1] drops its surrounding quotes.
    rendered = PLACEHOLDER.sub(lambda m: json.dumps(values[m.group(1)])[1:-1], text)
    json.loads(rendered)
    return rendered


def render_for_functions(function_arns: Mapping[str, str]) -> str:
    """The definition for `{function folder name: function ARN}` (what the deploy has)."""
    unknown = sorted(set(function_arns) - set(FUNCTION_PLACEHOLDERS))
    if unknown:
        raise PlaceholderError(f"no placeholder for functions {unknown}")
    return render({FUNCTION_PLACEHOLDERS[f]: arn for f, arn in function_arns.items()})
