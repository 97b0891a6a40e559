"""Monitoring: the data-capture reader (`capture`), its figures (`plots`) and the report (`report`).

The names most callers need are re-exported here: `from scones import monitoring`.
"""

from scones.monitoring.capture import (
    CaptureFormatError,
    CaptureRead,
    CaptureRecord,
    parse_output,
    parse_record,
    parse_time,
    probabilities_and_label,
    read_capture,
    wait_for_capture,
)
from scones.monitoring.plots import plot_confidence_over_time, threshold_line_of
from scones.monitoring.report import GRAPH_PNG, Report, build_report, data_uri, main, write_report

__all__ = [
    "GRAPH_PNG",
    "CaptureFormatError",
    "CaptureRead",
    "CaptureRecord",
    "Report",
    "build_report",
    "data_uri",
    "main",
    "parse_output",
    "parse_record",
    "parse_time",
    "plot_confidence_over_time",
    "probabilities_and_label",
    "read_capture",
    "threshold_line_of",
    "wait_for_capture",
    "write_report",
]
