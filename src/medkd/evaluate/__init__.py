"""medkd.evaluate: per-case metrics, their summaries, and statistics for comparing runs."""

from __future__ import annotations

from medkd.evaluate.metrics import (
    BRATS_REGIONS,
    HD95,
    METRICS,
    STATUSES,
    binary_metrics,
    case_metrics,
    per_case_csv_text,
    region_masks,
    summarize,
    write_per_case_csv,
)
from medkd.evaluate.stats import format_mean_std, mean_std, one_way_anova, paired_wilcoxon

__all__ = [
    "BRATS_REGIONS",
    "HD95",
    "METRICS",
    "STATUSES",
    "binary_metrics",
    "case_metrics",
    "format_mean_std",
    "mean_std",
    "one_way_anova",
    "paired_wilcoxon",
    "region_masks",
    "summarize",
    "per_case_csv_text",
    "write_per_case_csv",
]
