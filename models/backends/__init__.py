"""Registered backends: every module here registers one ``Backend`` subclass (``@register_backend``).

The registry imports all of them on first use, so a new backend is one new file in this folder.
"""
