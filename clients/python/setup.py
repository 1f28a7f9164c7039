"""The client's version: the repository's VERSION (``VERSION`` here links to it), read so that a
build without it fails (setuptools' ``file:`` would only warn and build 0.0.0). Everything else
is in pyproject.toml."""

from pathlib import Path

from setuptools import setup

setup(version=(Path(__file__).parent / "VERSION").read_text(encoding="utf-8").strip())
