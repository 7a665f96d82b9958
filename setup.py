"""Hands the cffi build script to setuptools; everything else is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["robot/_build.py:ffibuilder"])
