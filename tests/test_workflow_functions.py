"""The table of the workflow's functions: every other list of them must agree with it."""

from __future__ import annotations

import json

from lambdas import package
from scones.settings import REPO_ROOT, Settings
from scones.workflow_functions import BY_FOLDER, WORKFLOW_FUNCTIONS
from statemachine import definition


def test_every_function_has_a_folder_and_every_folder_a_function() -> None:
    folders = {p.parent.name for p in (REPO_ROOT / "lambdas").glob("*/app.py")}
    assert folders == set(BY_FOLDER)
    assert tuple(f.folder for f in WORKFLOW_FUNCTIONS) == package.FUNCTIONS


def test_the_asl_placeholders_are_the_tables() -> None:
    template = definition.load_template()
    assert definition.placeholders(template) == {f.placeholder for f in WORKFLOW_FUNCTIONS}
    assert {f.folder: f.placeholder for f in WORKFLOW_FUNCTIONS} == definition.FUNCTION_PLACEHOLDERS
    # Each function is the target of exactly one Task.
    arns = {f: f"arn:aws:lambda:us-east-1:000000000000:function:{f}" for f in BY_FOLDER}
    rendered = json.loads(definition.render_for_functions(arns))
    tasks = [json.dumps(s) for s in rendered["States"].values() if s.get("Type") == "Task"]
    for folder, arn in arns.items():
        assert sum(arn in task for task in tasks) == 1, f"{folder} is not the target of one Task"


def test_names_are_unique_and_environments_name_real_settings() -> None:
    for attribute in ("folder", "suffix", "placeholder"):
        values = [getattr(f, attribute) for f in WORKFLOW_FUNCTIONS]
        assert len(set(values)) == len(values), f"two functions share a {attribute}"
    for function in WORKFLOW_FUNCTIONS:
        for setting in function.environment.values():
            assert setting in Settings.__dataclass_fields__, f"{function.folder}: {setting}"
        for permission in function.permissions:
            assert permission.resource in ("dataset-objects", "endpoint")
