"""Sensitivity tables: the table type, files, heatmaps, and the analysis that computes them.

The table type is this package's public interface: Conditional Balance reads tables through it."""
from .tables_math import SensitivityTable

__all__ = ["SensitivityTable"]
