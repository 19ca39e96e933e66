"""Client programs the tests run in a process of their own.

KServe's client and tritonclient's gRPC client cannot be imported into one process: both
register their generated copies of the same protocol (`inference.ServerLiveRequest`, ...) in
protobuf's default descriptor pool, and the second import fails with "duplicate symbol"
(tests/test_grpc_protocol.py keeps a check that reproduces it). The suite uses tritonclient's
gRPC client in-process, so KServe's runs here, from a subprocess.
"""
