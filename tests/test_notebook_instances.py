"""Notebook instances in sagemaker-local: the records SDK v2's get_execution_role reads.

The room is tested without HTTP (its records, rules and persistence) and once over the wire with
boto3 against a real sagemaker-local, where botocore's own model parses every answer.
"""

from __future__ import annotations

import threading
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from scones.testing import LocalStack
from services.sagemaker_local.exceptions import ValidationException
from services.sagemaker_local.notebooks import NotebookInstances
from services.sagemaker_local.store import JsonStore

ROLE = "arn:aws:iam::123456789012:role/AmazonSageMaker-ExecutionRole-test"


def _arn(kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:us-east-1:123456789012:{kind}/{name.lower()}"


@pytest.fixture
def notebooks(tmp_path: Path) -> NotebookInstances:
    return NotebookInstances(JsonStore(tmp_path), threading.RLock(), _arn, "us-east-1")


def _create(notebooks: NotebookInstances, name: str = "Course-NB") -> dict[str, str]:
    return notebooks.create(
        {"NotebookInstanceName": name, "InstanceType": "ml.t3.medium", "RoleArn": ROLE}
    )


def test_create_then_describe_gives_the_role_and_in_service(notebooks: NotebookInstances) -> None:
    created = _create(notebooks)
    assert created == {"NotebookInstanceArn": _arn("notebook-instance", "course-nb")}
    described = notebooks.describe({"NotebookInstanceName": "Course-NB"})
    assert described["RoleArn"] == ROLE
    assert described["NotebookInstanceStatus"] == "InService"
    assert described["Url"] == "course-nb.notebook.us-east-1.sagemaker.aws"
    assert described["InstanceType"] == "ml.t3.medium"


def test_unknown_instance_is_record_not_found(notebooks: NotebookInstances) -> None:
    with pytest.raises(ValidationException, match="RecordNotFound"):
        notebooks.describe({"NotebookInstanceName": "nope"})


def test_duplicate_and_bad_role_are_refused(notebooks: NotebookInstances) -> None:
    _create(notebooks)
    with pytest.raises(ValidationException, match="duplicate Notebook Instance"):
        _create(notebooks)
    with pytest.raises(ValidationException, match="roleArn"):
        notebooks.create(
            {"NotebookInstanceName": "x", "InstanceType": "ml.t3.medium", "RoleArn": "admin"}
        )


def test_delete_needs_a_stopped_instance_as_on_aws(notebooks: NotebookInstances) -> None:
    _create(notebooks)
    with pytest.raises(ValidationException, match=r"Status \(InService\) not in"):
        notebooks.delete({"NotebookInstanceName": "Course-NB"})
    notebooks.stop({"NotebookInstanceName": "Course-NB"})
    assert notebooks.describe({"NotebookInstanceName": "Course-NB"})["NotebookInstanceStatus"] == (
        "Stopped"
    )
    notebooks.start({"NotebookInstanceName": "Course-NB"})
    notebooks.stop({"NotebookInstanceName": "Course-NB"})
    notebooks.delete({"NotebookInstanceName": "Course-NB"})
    with pytest.raises(ValidationException, match="RecordNotFound"):
        notebooks.describe({"NotebookInstanceName": "Course-NB"})


def test_records_survive_a_restart(tmp_path: Path, notebooks: NotebookInstances) -> None:
    _create(notebooks, "kept")
    again = NotebookInstances(JsonStore(tmp_path), threading.RLock(), _arn, "us-east-1")
    assert again.describe({"NotebookInstanceName": "kept"})["RoleArn"] == ROLE


def test_list_filters_sorts_and_pages(notebooks: NotebookInstances) -> None:
    for name in ("alpha", "beta", "gamma"):
        _create(notebooks, name)
    notebooks.stop({"NotebookInstanceName": "beta"})
    first = notebooks.list({"SortBy": "Name", "SortOrder": "Ascending", "MaxResults": 2})
    assert [i["NotebookInstanceName"] for i in first["NotebookInstances"]] == ["alpha", "beta"]
    rest = notebooks.list(
        {"SortBy": "Name", "SortOrder": "Ascending", "NextToken": first["NextToken"]}
    )
    assert [i["NotebookInstanceName"] for i in rest["NotebookInstances"]] == ["gamma"]
    stopped = notebooks.list({"StatusEquals": "Stopped"})
    assert [i["NotebookInstanceName"] for i in stopped["NotebookInstances"]] == ["beta"]
    assert notebooks.list({"NameContains": "amm"})["NotebookInstances"][0][
        "NotebookInstanceName"
    ] == ("gamma")


def test_the_wire_with_boto3(local_stack: LocalStack) -> None:
    sagemaker = boto3.client("sagemaker")
    arn = sagemaker.create_notebook_instance(
        NotebookInstanceName="wire-nb", InstanceType="ml.t3.medium", RoleArn=ROLE
    )["NotebookInstanceArn"]
    sagemaker.get_waiter("notebook_instance_in_service").wait(NotebookInstanceName="wire-nb")
    described = sagemaker.describe_notebook_instance(NotebookInstanceName="wire-nb")
    assert (described["NotebookInstanceArn"], described["RoleArn"]) == (arn, ROLE)
    assert described["CreationTime"].tzinfo is not None
    listed = sagemaker.list_notebook_instances(NameContains="wire")["NotebookInstances"]
    assert [i["NotebookInstanceArn"] for i in listed] == [arn]
    with pytest.raises(ClientError) as missing:
        sagemaker.describe_notebook_instance(NotebookInstanceName="absent")
    assert missing.value.response["Error"] == {
        "Code": "ValidationException",
        "Message": "RecordNotFound",
    }
    with pytest.raises(ClientError) as invalid:
        sagemaker.create_notebook_instance(
            NotebookInstanceName="bad name!", InstanceType="x", RoleArn=ROLE
        )
    assert invalid.value.response["Error"]["Code"] == "ValidationException"
    sagemaker.stop_notebook_instance(NotebookInstanceName="wire-nb")
    sagemaker.delete_notebook_instance(NotebookInstanceName="wire-nb")
