"""The workflow's Lambda functions: one table that packaging, deploy, IAM, ASL and tests read.

Adding a function is one `WorkflowFunction` entry (plus its `lambdas/<folder>/app.py` and its
state in the ASL): the zip builder, the deploy's roles and functions, the state machine's
placeholder substitution and the tests all iterate over `WORKFLOW_FUNCTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HANDLER = "app.handler"


@dataclass(frozen=True)
class Permission:
    """One IAM statement a function's role needs, on a resource named by kind."""

    actions: tuple[str, ...]
    # "dataset-objects": the staged dataset's objects; "endpoint": the classifier endpoint.
    resource: str


@dataclass(frozen=True)
class WorkflowFunction:
    """One Lambda function of the workflow, by every name it goes by."""

    folder: str  # lambdas/<folder>/app.py
    suffix: str  # function and role name: <prefix>-<suffix>
    placeholder: str  # ${...} in statemachine/image_classification.asl.json
    timeout_s: int
    memory_mb: int
    # Environment variable -> the `Settings` field whose value it carries.
    environment: dict[str, str] = field(default_factory=dict)
    permissions: tuple[Permission, ...] = ()

    def name(self, prefix: str) -> str:
        """The function's (and its role's) name under a resource-name prefix."""
        return f"{prefix}-{self.suffix}"


WORKFLOW_FUNCTIONS: tuple[WorkflowFunction, ...] = (
    WorkflowFunction(
        "serialize_image_data",
        "serialize-image-data",
        "SerializeImageDataFunctionArn",
        timeout_s=10,
        memory_mb=256,
        permissions=(Permission(("s3:GetObject",), "dataset-objects"),),
    ),
    WorkflowFunction(
        "classify_image",
        "classify-image",
        "ClassifyImageFunctionArn",
        timeout_s=30,
        memory_mb=256,
        environment={"ENDPOINT_NAME": "endpoint_name"},
        permissions=(Permission(("sagemaker:InvokeEndpoint",), "endpoint"),),
    ),
    WorkflowFunction(
        "filter_inferences",
        "filter-inferences",
        "FilterInferencesFunctionArn",
        timeout_s=5,
        memory_mb=128,
        environment={"THRESHOLD": "threshold"},
    ),
)
BY_FOLDER = {function.folder: function for function in WORKFLOW_FUNCTIONS}
