"""Python client for the igbutton gRPC service.

The generated protobuf and gRPC modules live in ``igbutton.v1``.
"""
