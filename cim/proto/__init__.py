"""Generated protobuf messages for the cim wire protocol (see cim.proto).

Regenerate after editing cim.proto (protoc must match the pinned protobuf runtime):
    python -m grpc_tools.protoc -Icim/proto --python_out=cim/proto --pyi_out=cim/proto cim/proto/cim.proto
"""

from cim.proto.cim_pb2 import (
    DELIVERED,
    DELIVERY_ACK,
    ERROR,
    HISTORY,
    LOGIN_ANSWER,
    LOGIN_REQUEST,
    MARK_READ,
    MESSAGE,
    MESSAGE_STATUS,
    OFFLINE,
    PING,
    PRESENCE,
    READ,
    SEND_RECEIPT,
    SUBSCRIBE_PRESENCE,
    SYNC,
    BaseCommand,
    Delivery,
    MessageStatus,
    Request,
    Response,
)

# The commands as plain ints too (protoc's module-level constants): on hot paths
# ``BaseCommand.MESSAGE`` costs a Python-level __getattr__ on every use.
__all__ = [
    "BaseCommand", "Delivery", "Request", "Response",
    "LOGIN_REQUEST", "MESSAGE", "PING", "OFFLINE", "SEND_RECEIPT", "ERROR", "DELIVERY_ACK", "SYNC",
    "LOGIN_ANSWER", "MESSAGE_STATUS", "MARK_READ", "HISTORY", "MessageStatus", "DELIVERED", "READ",
    "PRESENCE", "SUBSCRIBE_PRESENCE",
]
