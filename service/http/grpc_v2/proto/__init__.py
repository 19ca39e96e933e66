"""The gRPC protocol's messages, generated from the vendored .proto files (see generate.py and
README.md), registered in this package's own descriptor pool (`POOL`)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
