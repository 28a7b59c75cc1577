"""Package layout that pyproject.toml cannot say alone: the repository's top-level ``dbc/`` and ``config/``
(the design keeps them there) go into the wheel as the packages ``agent.shipped.dbc`` and
``agent.shipped.config``, so an installed agent finds them through importlib.resources (agent/shipped).
``simulator.data`` (the demo log) is a data-only package: named here so setuptools ships it as one."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["agent", "agent.*", "simulator", "simulator.*"]),
              "simulator.data", "agent.shipped.dbc", "agent.shipped.config"],
    package_dir={"agent.shipped.dbc": "dbc", "agent.shipped.config": "config"},
)
