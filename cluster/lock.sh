#!/usr/bin/env bash
# Regenerate cluster/requirements-gpu.lock: glmscore's dependencies (less ray, which Ray's images have)
# plus the `gpu` extra, from pyproject.toml, resolved for Linux x86_64 / Python 3.11 (Ray's GPU images)
# with every wheel's SHA-256. Cluster nodes install it with `pip install --require-hashes`; the test
# tests/core/test_cluster_configs.py::test_the_lock_is_current fails when pyproject.toml changes and this
# was not rerun. Needs uv (`pip install uv`) and the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
uv="$(command -v uv || echo .venv/bin/uv)"
inputs="$(mktemp)"
trap 'rm -f "$inputs" "$inputs.lock"' EXIT
"$py" - >"$inputs" <<'PY'
import tomllib
from packaging.requirements import Requirement
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
base = [r for r in project["dependencies"] if Requirement(r).name != "ray"]
print("\n".join(sorted(str(Requirement(r)) for r in base + project["optional-dependencies"]["gpu"])))
PY
"$uv" pip compile "$inputs" --generate-hashes --python-platform x86_64-manylinux_2_28 --python-version 3.11 \
  --no-header --quiet -o "$inputs.lock"
{
  echo "# glmscore's cluster dependencies, pinned with hashes: regenerate with cluster/lock.sh (never by hand)."
  echo "# Resolved for Linux x86_64, Python 3.11 (rayproject/ray:*-py311-gpu) from these requirements:"
  sed 's/^/#   requirement: /' "$inputs"
  cat "$inputs.lock"
} > cluster/requirements-gpu.lock
echo "wrote cluster/requirements-gpu.lock ($(grep -c '==' cluster/requirements-gpu.lock) packages)"
