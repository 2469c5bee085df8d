"""Pure statistics on arrays and DataFrames: paired tests, multiple testing, metrics, reports, plots.

Nothing here imports Ray Data or torch models.
"""
