"""Benchmark sources, Ray Data jobs, shard layout, manifests, resume and the ``glmscore`` CLI."""
