"""Package layout that pyproject.toml cannot say alone: the repository's top-level ``dbc/`` and ``config/``
(the design keeps them there) go into the wheel as the packages ``agent.shipped.dbc`` and
``agent.shipped.config``, so an installed agent finds them through importlib.resources (agent/shipped)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["agent", "agent.*", "simulator", "simulator.*"]),
              "agent.shipped.dbc", "agent.shipped.config"],
    package_dir={"agent.shipped.dbc": "dbc", "agent.shipped.config": "config"},
)
