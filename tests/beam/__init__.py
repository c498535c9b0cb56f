"""Apache Beam tests: run in their own virtual environment (apache-beam, protobuf 6), see conftest.py.

A package, so that its conftest.py imports as ``beam.conftest`` and leaves ``conftest`` (the
shared fixtures of tests/conftest.py that test modules import) untouched.
"""
