"""The training contract in files and environment: what a training script finds under /opt/ml.

A job folder (`<state>/training-jobs/<name>/`) stands for `/opt/ml`; this module writes its
`input/config/{hyperparameters,resourceconfig,inputdataconfig}.json` and builds the
sagemaker-training toolkit's `SM_*` environment and `--key value` arguments, as the toolkit
does in a SageMaker container (one host, `algo-1`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "algo-1"
GROUP = "homogeneousCluster"


def decode_hyperparameter(value: str) -> Any:
    """Hyperparameters arrive as strings; the SageMaker SDK JSON-encodes them (toolkit rule)."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def cli_value(value: Any) -> str:
    """How the toolkit renders a hyperparameter on the command line."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return str(value)


def gpu_count() -> int:
    """Number of NVIDIA devices visible (without importing a framework)."""
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def user_hyperparameters(job: dict[str, Any]) -> dict[str, Any]:
    """The job's hyperparameters without the toolkit's own `sagemaker_*` ones, decoded."""
    hps = job.get("HyperParameters", {})
    return {k: decode_hyperparameter(v) for k, v in hps.items() if not k.startswith("sagemaker_")}


def script_arguments(user_hps: dict[str, Any], checkpoint_dir: Path) -> list[str]:
    """`--key value` per hyperparameter, plus `--checkpoint-dir` unless the job sets one."""
    args: list[str] = []
    for key in sorted(user_hps):
        args += [f"--{key}", cli_value(user_hps[key])]
    if not any(k.replace("_", "-") == "checkpoint-dir" for k in user_hps):
        args += ["--checkpoint-dir", str(checkpoint_dir)]
    return args


def write_config_files(job: dict[str, Any], job_dir: Path) -> dict[str, Any]:
    """Write `input/config/*.json`; return the resource and input-data configs they hold."""
    instance_type = job.get("ResourceConfig", {}).get("InstanceType", "local")
    resource_config = {
        "current_host": HOST,
        "current_instance_type": instance_type,
        "current_group_name": GROUP,
        "hosts": [HOST],
        "instance_groups": [
            {"instance_group_name": GROUP, "instance_type": instance_type, "hosts": [HOST]}
        ],
        "network_interface_name": "eth0",
    }
    input_data_config = {
        c["ChannelName"]: {
            "TrainingInputMode": c.get("InputMode", "File"),
            "S3DistributionType": c["DataSource"]
            .get("S3DataSource", {})
            .get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": c.get("RecordWrapperType", "None"),
            **({"ContentType": c["ContentType"]} if c.get("ContentType") else {}),
        }
        for c in job.get("InputDataConfig", [])
    }
    files = {
        "hyperparameters.json": job.get("HyperParameters", {}),
        "resourceconfig.json": resource_config,
        "inputdataconfig.json": input_data_config,
    }
    config_dir = job_dir / "input" / "config"
    for name, content in files.items():
        (config_dir / name).write_text(json.dumps(content, indent=1), encoding="utf-8")
    return {"resource": resource_config, "input_data": input_data_config}


def training_environment(
    job: dict[str, Any],
    job_dir: Path,
    program: str,
    args: list[str],
    user_hps: dict[str, Any],
    configs: dict[str, Any],
) -> dict[str, str]:
    """The process environment: the host's, the job's `Environment`, then the `SM_*` variables."""
    d = job_dir
    channels = [c["ChannelName"] for c in job.get("InputDataConfig", [])]
    hps_all = job.get("HyperParameters", {})
    submit = decode_hyperparameter(hps_all.get("sagemaker_submit_directory", ""))
    sm = {
        "SM_HOSTS": json.dumps([HOST]),
        "SM_CURRENT_HOST": HOST,
        "SM_CURRENT_INSTANCE_TYPE": configs["resource"]["current_instance_type"],
        "SM_CURRENT_INSTANCE_GROUP": GROUP,
        "SM_NETWORK_INTERFACE_NAME": "eth0",
        "SM_HPS": json.dumps(user_hps),
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_USER_ARGS": json.dumps(args),
        "SM_USER_ENTRY_POINT": program,
        "SM_MODULE_NAME": Path(program).stem,
        "SM_MODULE_DIR": str(submit or d / "code"),
        "SM_LOG_LEVEL": "20",
        "SM_FRAMEWORK_MODULE": "",
        "SM_FRAMEWORK_PARAMS": "{}",
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_NUM_GPUS": str(gpu_count()),
        "SM_NUM_NEURONS": "0",
        "SM_MODEL_DIR": str(d / "model"),
        "SM_INPUT_DIR": str(d / "input"),
        "SM_INPUT_CONFIG_DIR": str(d / "input" / "config"),
        "SM_INPUT_DATA_CONFIG": json.dumps(configs["input_data"]),
        "SM_RESOURCE_CONFIG": json.dumps(configs["resource"]),
        "SM_OUTPUT_DIR": str(d / "output"),
        "SM_OUTPUT_DATA_DIR": str(d / "output" / "data"),
        "SM_OUTPUT_INTERMEDIATE_DIR": str(d / "output" / "intermediate"),
        "SM_CHECKPOINT_DIR": str(d / "checkpoints"),
        "TRAINING_JOB_NAME": job["TrainingJobName"],
        "TRAINING_JOB_ARN": job["TrainingJobArn"],
    }
    for channel in channels:
        sm[f"SM_CHANNEL_{channel.upper()}"] = str(d / "input" / "data" / channel)
    for key, value in user_hps.items():
        sm[f"SM_HP_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    sm["SM_TRAINING_ENV"] = json.dumps(
        {
            "additional_framework_parameters": {},
            "channel_input_dirs": {c: sm[f"SM_CHANNEL_{c.upper()}"] for c in channels},
            "current_host": HOST,
            "hosts": [HOST],
            "hyperparameters": user_hps,
            "input_config_dir": sm["SM_INPUT_CONFIG_DIR"],
            "input_data_config": configs["input_data"],
            "input_dir": sm["SM_INPUT_DIR"],
            "job_name": job["TrainingJobName"],
            "log_level": 20,
            "model_dir": sm["SM_MODEL_DIR"],
            "module_dir": sm["SM_MODULE_DIR"],
            "module_name": sm["SM_MODULE_NAME"],
            "network_interface_name": "eth0",
            "num_cpus": int(sm["SM_NUM_CPUS"]),
            "num_gpus": int(sm["SM_NUM_GPUS"]),
            "output_data_dir": sm["SM_OUTPUT_DATA_DIR"],
            "output_dir": sm["SM_OUTPUT_DIR"],
            "resource_config": configs["resource"],
            "user_entry_point": program,
        }
    )
    env = {**os.environ, **job.get("Environment", {}), **sm, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(d / "code"), str(REPO_ROOT)]))
    return env
