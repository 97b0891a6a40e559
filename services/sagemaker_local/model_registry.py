"""Models and endpoint configs of the control plane: records only, nothing runs.

An endpoint takes a snapshot of its config and models when it deploys (`SageMakerBackend`),
so deleting either later leaves running endpoints serving, as on AWS.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from typing import Any

from .exceptions import ValidationException
from .records import (
    ControlPlaneState,
    Records,
    delete_operation,
    describe_operation,
    list_operation,
    request_record,
)


class ModelRegistry:
    """CreateModel ... ListEndpointConfigs: the records endpoints are deployed from."""

    def __init__(self, state: ControlPlaneState, model_in_use: Callable[[str], bool]) -> None:
        self.state_dir, self.lock, self.arn = state.state_dir, state.lock, state.arn
        self.model_in_use = model_in_use
        store, arn = state.store, state.arn
        self.models = Records(
            store,
            "models",
            lambda name: ValidationException(f'Could not find model "{arn("model", name)}".'),
            ("ModelName", "ModelArn", "CreationTime"),
        )
        self.endpoint_configs = Records(
            store,
            "endpoint-configs",
            lambda name: ValidationException(
                f'Could not find endpoint configuration "{arn("endpoint-config", name)}".'
            ),
            ("EndpointConfigName", "EndpointConfigArn", "CreationTime"),
        )

    def load(self) -> None:
        """Read the persisted records."""
        with self.lock:
            self.models.load()
            self.endpoint_configs.load()

    def operations(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """The operations this room answers, by backend method name."""
        return {
            name: getattr(self, name)
            for name in (
                "create_model",
                "describe_model",
                "delete_model",
                "list_models",
                "create_endpoint_config",
                "describe_endpoint_config",
                "delete_endpoint_config",
                "list_endpoint_configs",
            )
        }

    # -- models --------------------------------------------------------------------------------
    def create_model(self, params: dict[str, Any]) -> dict[str, Any]:
        """CreateModel (one container: PrimaryContainer or a one-element Containers)."""
        name = params["ModelName"]
        arn = self.arn("model", name)
        containers = (
            [params["PrimaryContainer"]]
            if params.get("PrimaryContainer")
            else params.get("Containers") or []
        )
        if not containers:
            raise ValidationException("Either PrimaryContainer or Containers must be specified.")
        if len(containers) > 1:
            raise ValidationException("sagemaker-local serves models with one container only.")
        container = containers[0]
        if not (container.get("Image") or container.get("ModelPackageName")):
            raise ValidationException("Either Image or ModelPackageName must be specified.")
        with self.lock:
            if name in self.models:
                raise ValidationException(f'Cannot create already existing model "{arn}".')
            record = request_record(
                name,
                params,
                ModelArn=arn,
                EnableNetworkIsolation=params.get("EnableNetworkIsolation", False),
                CreationTime=time.time(),
            )
            self.models.add(record)
        return {"ModelArn": arn}

    describe_model = describe_operation("models", "ModelName")

    def delete_model(self, params: dict[str, Any]) -> dict[str, Any]:
        """DeleteModel (running endpoints keep serving it, as on AWS)."""
        name = params["ModelName"]
        with self.lock:
            self.models.remove(name)
            in_use = self.model_in_use(name)
        if not in_use:
            shutil.rmtree(self.state_dir / "models" / name, ignore_errors=True)
        return {}

    list_models = list_operation("models", "Models")

    # -- endpoint configs ----------------------------------------------------------------------
    def create_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """CreateEndpointConfig (with DataCaptureConfig)."""
        name = params["EndpointConfigName"]
        arn = self.arn("endpoint-config", name)
        variants = params["ProductionVariants"]
        names = [v["VariantName"] for v in variants]
        if len(set(names)) != len(names):
            raise ValidationException(
                "Production variant names must be unique within an endpoint config."
            )
        if params.get("AsyncInferenceConfig"):
            raise ValidationException("sagemaker-local does not serve asynchronous inference.")
        with self.lock:
            if name in self.endpoint_configs:
                raise ValidationException(
                    f'Cannot create already existing endpoint configuration "{arn}".'
                )
            for variant in variants:
                if not variant.get("ModelName"):
                    raise ValidationException(f"Variant {variant['VariantName']} names no model.")
                self.models.find(variant["ModelName"])
            stored_variants = [
                {"InitialVariantWeight": 1.0, "InitialInstanceCount": 1, **copy.deepcopy(v)}
                for v in variants
            ]
            capture = copy.deepcopy(params.get("DataCaptureConfig"))
            if capture is not None:
                capture.setdefault("EnableCapture", True)
            record = request_record(
                name,
                params,
                EndpointConfigArn=arn,
                ProductionVariants=stored_variants,
                DataCaptureConfig=capture,
                CreationTime=time.time(),
            )
            self.endpoint_configs.add(record)
        return {"EndpointConfigArn": arn}

    describe_endpoint_config = describe_operation("endpoint_configs", "EndpointConfigName")

    # Endpoints using it keep running, as on AWS: they deployed from a snapshot.
    delete_endpoint_config = delete_operation("endpoint_configs", "EndpointConfigName")
    list_endpoint_configs = list_operation("endpoint_configs", "EndpointConfigs")
