"""Report stage: what a quantize or eval call found, as a dict, JSON, plain text or HTML; its
schema, typed, in `lowbit.report.schema`."""

from lowbit.report.report import Report, versions
from lowbit.report.schema import REPORT_SCHEMA, ReportData, Variant

__all__ = ["REPORT_SCHEMA", "Report", "ReportData", "Variant", "versions"]
