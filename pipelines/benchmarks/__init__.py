"""Registered benchmarks: every module here registers one ``Benchmark`` subclass (``@register_benchmark``).

The registry imports all of them on first use, so a new benchmark is one new file in this folder.
"""
