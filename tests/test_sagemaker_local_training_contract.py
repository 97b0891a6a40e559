"""The training contract's files and environment, as the sagemaker-training toolkit makes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.sagemaker_local import training_contract as contract


def job() -> dict[str, Any]:
    return {
        "TrainingJobName": "j1",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:000000000000:training-job/j1",
        "HyperParameters": {"epochs": "3", "lr": '"0.1"', "sagemaker_program": '"train.py"'},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge"},
        "InputDataConfig": [
            {"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": "s3://b/t"}}},
        ],
        "Environment": {"EXTRA": "1"},
    }


def test_hyperparameters_are_decoded_and_rendered_as_the_toolkit_does(tmp_path: Path) -> None:
    hps = contract.user_hyperparameters(job())
    assert hps == {"epochs": 3, "lr": "0.1"}  # JSON-decoded, sagemaker_* left out
    assert contract.script_arguments(hps, tmp_path) == [
        "--epochs", "3", "--lr", "0.1", "--checkpoint-dir", str(tmp_path),
    ]  # fmt: skip
    own = contract.script_arguments({"checkpoint_dir": "/c"}, tmp_path)
    assert own == ["--checkpoint_dir", "/c"]  # the job's own checkpoint folder wins
    assert contract.cli_value({"b": 2, "a": 1}) == "a=1,b=2"


def test_config_files_and_environment_describe_one_host(tmp_path: Path) -> None:
    (tmp_path / "input" / "config").mkdir(parents=True)
    configs = contract.write_config_files(job(), tmp_path)
    resource = json.loads((tmp_path / "input" / "config" / "resourceconfig.json").read_text())
    assert resource["current_host"] == "algo-1" and resource["hosts"] == ["algo-1"]
    assert resource["current_instance_type"] == "ml.m5.xlarge"
    data = json.loads((tmp_path / "input" / "config" / "inputdataconfig.json").read_text())
    assert data == {
        "train": {
            "TrainingInputMode": "File",
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        }
    }
    hps = contract.user_hyperparameters(job())
    args = contract.script_arguments(hps, tmp_path / "checkpoints")
    env = contract.training_environment(job(), tmp_path, "train.py", args, hps, configs)
    assert env["SM_CHANNEL_TRAIN"] == str(tmp_path / "input" / "data" / "train")
    assert env["SM_HP_EPOCHS"] == "3" and env["SM_HP_LR"] == "0.1"
    assert env["SM_MODEL_DIR"] == str(tmp_path / "model") and env["EXTRA"] == "1"
    assert json.loads(env["SM_USER_ARGS"]) == args
    assert json.loads(env["SM_TRAINING_ENV"])["job_name"] == "j1"
    assert env["PYTHONPATH"].split(":")[0] == str(tmp_path / "code")
