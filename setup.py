"""The one thing pyproject.toml cannot say: the design card's top-level folders ``models/``, ``pipelines/``
and ``analysis/`` install as the subpackages ``glmscore.models``, ``glmscore.pipelines`` and
``glmscore.analysis`` (setuptools ``package_dir``), found with every package below them, so a new benchmark
package or backend needs no line here. Nothing named ``models`` or ``pipelines`` lands at the top of
site-packages."""

from setuptools import find_packages, setup

ROOMS = ("models", "pipelines", "analysis")

setup(
    packages=["glmscore"] + [f"glmscore.{room}{'.' + sub if sub else ''}" for room in ROOMS
                             for sub in ["", *find_packages(room)]],
    package_dir={"glmscore": "glmscore", **{f"glmscore.{room}": room for room in ROOMS}},
)
