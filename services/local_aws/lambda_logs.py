"""A function's LoggingConfig: runtime variables, log group, and the platform's own lines.

Application logs are formatted by awslambdaric itself (AWS_LAMBDA_LOG_FORMAT and
AWS_LAMBDA_LOG_LEVEL are its variables); this module only writes what the Lambda platform writes
around them: START/END/REPORT in Text, `platform.*` records in JSON, filtered by SystemLogLevel.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")


@dataclass(frozen=True)
class LoggingConfig:
    """LoggingConfig of a function, with AWS's defaults filled in."""

    log_format: str = "Text"
    application_log_level: str | None = None
    system_log_level: str | None = None
    log_group: str | None = None

    @classmethod
    def from_api(cls, config: dict[str, Any] | None, function_name: str) -> LoggingConfig:
        """From the API's LoggingConfig (levels default to INFO with JSON, as on AWS)."""
        config = config or {}
        log_format = config.get("LogFormat") or "Text"
        json_format = log_format == "JSON"
        return cls(
            log_format=log_format,
            application_log_level=config.get("ApplicationLogLevel")
            or ("INFO" if json_format else None),
            system_log_level=config.get("SystemLogLevel") or ("INFO" if json_format else None),
            log_group=config.get("LogGroup") or f"/aws/lambda/{function_name}",
        )

    def to_api(self) -> dict[str, str]:
        """As GetFunctionConfiguration returns it."""
        result = {"LogFormat": self.log_format, "LogGroup": self.log_group or ""}
        if self.application_log_level:
            result["ApplicationLogLevel"] = self.application_log_level
        if self.system_log_level:
            result["SystemLogLevel"] = self.system_log_level
        return result

    @property
    def is_json(self) -> bool:
        """Whether logs are JSON records."""
        return self.log_format == "JSON"

    def runtime_variables(self) -> dict[str, str]:
        """The variables through which the runtime client formats and filters."""
        if not self.is_json:
            return {}
        variables = {"AWS_LAMBDA_LOG_FORMAT": "JSON"}
        if self.application_log_level:
            variables["AWS_LAMBDA_LOG_LEVEL"] = self.application_log_level
        return variables

    def platform_info_shown(self) -> bool:
        """Whether INFO platform lines (start, report) pass the SystemLogLevel filter."""
        level = self.system_log_level or "INFO"
        return LEVELS.index(level) <= LEVELS.index("INFO") if level in LEVELS else True


def _time() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _record(kind: str, record: dict[str, Any]) -> str:
    return json.dumps({"time": _time(), "type": kind, "record": record})


def start_lines(
    config: LoggingConfig,
    request_id: str,
    version: str,
    cold: bool,
    function_name: str,
    runtime: str,
) -> list[str]:
    """What the platform writes before the handler's output."""
    if not config.is_json:
        return [f"START RequestId: {request_id} Version: {version}"]
    if not config.platform_info_shown():
        return []
    lines = []
    if cold:
        init = {
            "initializationType": "on-demand",
            "phase": "init",
            "runtimeVersion": runtime,
            "functionName": function_name,
            "functionVersion": version,
        }
        lines.append(_record("platform.initStart", init))
    lines.append(_record("platform.start", {"requestId": request_id, "version": version}))
    return lines


def end_lines(
    config: LoggingConfig,
    request_id: str,
    metrics: dict[str, float | int],
    status: str,
    timeout_s: float | None,
) -> list[str]:
    """What the platform writes after the handler's output: END and REPORT, or platform.report."""
    if not config.is_json:
        lines = []
        if timeout_s is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            lines.append(f"{stamp}Z {request_id} Task timed out after {timeout_s:.2f} seconds")
        lines.append(f"END RequestId: {request_id}")
        report = (
            f"REPORT RequestId: {request_id}\tDuration: {metrics['durationMs']:.2f} ms\t"
            f"Billed Duration: {metrics['billedDurationMs']} ms\t"
            f"Memory Size: {metrics['memorySizeMB']} MB\t"
            f"Max Memory Used: {metrics['maxMemoryUsedMB']} MB"
        )
        if "initDurationMs" in metrics:
            report += f"\tInit Duration: {metrics['initDurationMs']:.2f} ms"
        return [*lines, report]
    if not config.platform_info_shown() and status == "success":
        return []
    record = {"requestId": request_id, "metrics": metrics, "status": status}
    return [_record("platform.report", record)]
