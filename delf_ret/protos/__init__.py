"""Generated protobuf modules (from the .proto files in the top-level ``protos/``).

Regenerate with ``python -m delf_ret.protos.regenerate``; a test fails if the
committed modules differ from what the .proto files generate.
"""
