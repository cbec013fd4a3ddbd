"""The measurements of bench/reliability_report.py (issue 17's reliability table), one module per kind.

common (the worker subprocess handle, kill-delay spread, log), workers (what a killed `python` runs), kills, outages,
inputs (malformed tasks, the two pytest rows), table (rows, markdown, machine facts). How each row is measured: the
module docstring of bench/reliability_report.py.
"""
