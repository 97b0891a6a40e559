"""Notebook instances of the control plane: the records SageMaker Python SDK v2 reads.

On AWS a notebook instance is a managed Jupyter host; SDK v2 running there finds the instance's
name in `/opt/ml/metadata/resource-metadata.json` and asks `DescribeNotebookInstance` for its
`RoleArn` (that is how `get_execution_role()` works without STS). Locally nothing is provisioned:
the instance is a record whose kernel the launcher in `examples/course-style/run_notebook.py`
starts with that metadata file mounted in a private mount namespace. So an instance is InService
as soon as it is created (AWS passes through Pending for minutes), Stop/Start are immediate, and
Delete follows AWS's rule (only a Stopped or Failed instance).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .exceptions import ValidationException
from .listing import filter_times, page
from .store import JsonStore

KIND = "notebook-instances"
# The control-plane operations this room serves (registered by responses.py and the backend).
NOTEBOOK_OPERATIONS = (
    "CreateNotebookInstance",
    "DescribeNotebookInstance",
    "ListNotebookInstances",
    "StopNotebookInstance",
    "StartNotebookInstance",
    "DeleteNotebookInstance",
)
SORT_KEYS = {"Name": "NotebookInstanceName", "CreationTime": "CreationTime", "Status": "status"}


@dataclass
class NotebookInstance:
    """One notebook instance as DescribeNotebookInstance reports it."""

    name: str
    arn: str
    url: str
    instance_type: str
    role_arn: str
    status: str = "InService"
    creation_time: float = field(default_factory=time.time)
    last_modified_time: float = field(default_factory=time.time)
    volume_size_gb: int = 5
    direct_internet_access: str = "Enabled"
    root_access: str = "Enabled"
    platform_identifier: str = "notebook-al2-v2"
    lifecycle_config_name: str | None = None
    default_code_repository: str | None = None
    tags: list[dict[str, str]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The DescribeNotebookInstance answer."""
        answer: dict[str, Any] = {
            "NotebookInstanceArn": self.arn,
            "NotebookInstanceName": self.name,
            "NotebookInstanceStatus": self.status,
            "Url": self.url,
            "InstanceType": self.instance_type,
            "RoleArn": self.role_arn,
            "CreationTime": self.creation_time,
            "LastModifiedTime": self.last_modified_time,
            "DirectInternetAccess": self.direct_internet_access,
            "VolumeSizeInGB": self.volume_size_gb,
            "RootAccess": self.root_access,
            "PlatformIdentifier": self.platform_identifier,
        }
        if self.lifecycle_config_name:
            answer["NotebookInstanceLifecycleConfigName"] = self.lifecycle_config_name
        if self.default_code_repository:
            answer["DefaultCodeRepository"] = self.default_code_repository
        return answer

    def summary(self) -> dict[str, Any]:
        """The ListNotebookInstances entry."""
        keys = (
            "NotebookInstanceName",
            "NotebookInstanceArn",
            "NotebookInstanceStatus",
            "Url",
            "InstanceType",
            "CreationTime",
            "LastModifiedTime",
        )
        described = self.describe()
        return {key: described[key] for key in keys}


class NotebookInstances:
    """Create/Describe/List/Stop/Start/DeleteNotebookInstance over persisted records."""

    def __init__(
        self, store: JsonStore, lock: threading.RLock, arn: Callable[[str, str], str], region: str
    ) -> None:
        self.store = store
        self.lock = lock
        self.arn = arn
        self.region = region
        self.instances = {
            name: NotebookInstance(**record) for name, record in store.load_all(KIND).items()
        }

    def operations(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """Handler of each operation, by the backend's method name."""
        return {
            "create_notebook_instance": self.create,
            "describe_notebook_instance": self.describe,
            "list_notebook_instances": self.list,
            "stop_notebook_instance": self.stop,
            "start_notebook_instance": self.start,
            "delete_notebook_instance": self.delete,
        }

    def _save(self, instance: NotebookInstance) -> None:
        instance.last_modified_time = time.time()
        self.store.put(KIND, instance.name, asdict(instance))

    def _get(self, name: str) -> NotebookInstance:
        instance = self.instances.get(name)
        if instance is None:
            # AWS answers an unknown instance this way (not ResourceNotFound).
            raise ValidationException("RecordNotFound")
        return instance

    def create(self, params: dict[str, Any]) -> dict[str, Any]:
        """CreateNotebookInstance: the record, InService at once (nothing to provision)."""
        name = params["NotebookInstanceName"]
        if not params["RoleArn"].startswith("arn:aws:iam::") or ":role/" not in params["RoleArn"]:
            raise ValidationException(
                f"1 validation error detected: Value '{params['RoleArn']}' at 'roleArn' failed "
                "to satisfy constraint: Member must satisfy regular expression pattern: "
                "^arn:aws[a-z\\-]*:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+$"
            )
        with self.lock:
            arn = self.arn("notebook-instance", name)
            if name in self.instances:
                raise ValidationException(f"Cannot create a duplicate Notebook Instance ({arn})")
            instance = NotebookInstance(
                name=name,
                arn=arn,
                url=f"{name.lower()}.notebook.{self.region}.sagemaker.aws",
                instance_type=params["InstanceType"],
                role_arn=params["RoleArn"],
                volume_size_gb=int(params.get("VolumeSizeInGB", 5)),
                direct_internet_access=params.get("DirectInternetAccess", "Enabled"),
                root_access=params.get("RootAccess", "Enabled"),
                platform_identifier=params.get("PlatformIdentifier", "notebook-al2-v2"),
                lifecycle_config_name=params.get("LifecycleConfigName"),
                default_code_repository=params.get("DefaultCodeRepository"),
                tags=list(params.get("Tags", [])),
            )
            self.instances[name] = instance
            self._save(instance)
        return {"NotebookInstanceArn": arn}

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        """DescribeNotebookInstance."""
        with self.lock:
            return self._get(params["NotebookInstanceName"]).describe()

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListNotebookInstances: NameContains, StatusEquals, time filters, sorting, paging."""
        with self.lock:
            rows = [
                {**i.summary(), "_name": i.name, "status": i.status}
                for i in self.instances.values()
            ]
        rows = filter_times(rows, params)
        if params.get("StatusEquals"):
            rows = [r for r in rows if r["status"] == params["StatusEquals"]]
        rows, token = page(rows, params, SORT_KEYS)
        answer: dict[str, Any] = {
            "NotebookInstances": [
                {k: v for k, v in r.items() if k not in ("_name", "status")} for r in rows
            ]
        }
        if token:
            answer["NextToken"] = token
        return answer

    def _transition(self, name: str, allowed: tuple[str, ...], target: str, verb: str) -> None:
        with self.lock:
            instance = self._get(name)
            if instance.status not in allowed:
                raise ValidationException(
                    f"Status ({instance.status}) not in ([{', '.join(allowed)}]). Unable to "
                    f"transition to ({verb}) for Notebook Instance ({instance.arn})."
                )
            instance.status = target
            self._save(instance)

    def stop(self, params: dict[str, Any]) -> dict[str, Any]:
        """StopNotebookInstance: InService -> Stopped (the kernel launcher holds no host)."""
        self._transition(params["NotebookInstanceName"], ("InService",), "Stopped", "Stopping")
        return {}

    def start(self, params: dict[str, Any]) -> dict[str, Any]:
        """StartNotebookInstance: Stopped or Failed -> InService."""
        self._transition(
            params["NotebookInstanceName"], ("Stopped", "Failed"), "InService", "Pending"
        )
        return {}

    def delete(self, params: dict[str, Any]) -> dict[str, Any]:
        """DeleteNotebookInstance: only a Stopped or Failed instance, as on AWS."""
        name = params["NotebookInstanceName"]
        self._transition(name, ("Stopped", "Failed"), "Deleting", "Deleting")
        with self.lock:
            self.instances.pop(name, None)
            self.store.delete(KIND, name)
        return {}
