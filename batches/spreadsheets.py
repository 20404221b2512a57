"""What every CSV export shares so that a spreadsheet opening it never evaluates a cell (OWASP, "CSV Injection")."""

from __future__ import annotations

# What makes a spreadsheet read a cell as a formula: such a cell gets a leading "'".
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert_cell(value):
    """`value` as a spreadsheet shows it but never evaluates: text starting like a formula gets a leading "'".
    Numbers stay numbers (the exports' numbers are counts and amounts, never negative)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
