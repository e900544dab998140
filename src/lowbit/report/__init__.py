"""Report stage: what a quantize or eval call found, as a dict, JSON, plain text or HTML."""

from lowbit.report.report import REPORT_SCHEMA, Report, versions

__all__ = ["REPORT_SCHEMA", "Report", "versions"]
