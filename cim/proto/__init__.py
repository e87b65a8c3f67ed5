"""Generated protobuf messages for the cim wire protocol (see cim.proto).

Regenerate after editing cim.proto (protoc must match the pinned protobuf runtime):
    python -m grpc_tools.protoc -Icim/proto --python_out=cim/proto --pyi_out=cim/proto cim/proto/cim.proto
"""

from cim.proto.cim_pb2 import BaseCommand, Delivery, Request, Response

__all__ = ["BaseCommand", "Delivery", "Request", "Response"]
