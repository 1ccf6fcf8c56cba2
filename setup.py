# The package's metadata lives in pyproject.toml (PEP 621); this shim keeps `python setup.py ...` and old pips working.
from setuptools import setup

setup()
