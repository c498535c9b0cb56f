"""Generated protobuf modules (from the .proto files in the repository's top-level ``protos/``).

Regenerate with ``python scripts/regenerate_protos.py``; a test fails if the
committed modules differ from what the .proto files generate.
"""
