from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BaseCommand(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOGIN_REQUEST: _ClassVar[BaseCommand]
    MESSAGE: _ClassVar[BaseCommand]
    PING: _ClassVar[BaseCommand]
    OFFLINE: _ClassVar[BaseCommand]
    SEND_RECEIPT: _ClassVar[BaseCommand]
    ERROR: _ClassVar[BaseCommand]
    DELIVERY_ACK: _ClassVar[BaseCommand]
    SYNC: _ClassVar[BaseCommand]
    LOGIN_ANSWER: _ClassVar[BaseCommand]
    MESSAGE_STATUS: _ClassVar[BaseCommand]
    MARK_READ: _ClassVar[BaseCommand]
    HISTORY: _ClassVar[BaseCommand]
    PRESENCE: _ClassVar[BaseCommand]
    SUBSCRIBE_PRESENCE: _ClassVar[BaseCommand]

class MessageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_STATUS_UNSPECIFIED: _ClassVar[MessageStatus]
    DELIVERED: _ClassVar[MessageStatus]
    READ: _ClassVar[MessageStatus]
LOGIN_REQUEST: BaseCommand
MESSAGE: BaseCommand
PING: BaseCommand
OFFLINE: BaseCommand
SEND_RECEIPT: BaseCommand
ERROR: BaseCommand
DELIVERY_ACK: BaseCommand
SYNC: BaseCommand
LOGIN_ANSWER: BaseCommand
MESSAGE_STATUS: BaseCommand
MARK_READ: BaseCommand
HISTORY: BaseCommand
PRESENCE: BaseCommand
SUBSCRIBE_PRESENCE: BaseCommand
MESSAGE_STATUS_UNSPECIFIED: MessageStatus
DELIVERED: MessageStatus
READ: MessageStatus

class Request(_message.Message):
    __slots__ = ("reqMsg", "requestId", "cmd", "properties", "batchReqMsg", "clientMsgId", "ackSeq", "groupId", "token", "deviceId", "delaySeconds", "wantsReceipts", "peerId", "beforeSeq", "afterSeq", "limit", "keyword", "presenceUserIds", "presenceUnsubscribe")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQMSG_FIELD_NUMBER: _ClassVar[int]
    REQUESTID_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    BATCHREQMSG_FIELD_NUMBER: _ClassVar[int]
    CLIENTMSGID_FIELD_NUMBER: _ClassVar[int]
    ACKSEQ_FIELD_NUMBER: _ClassVar[int]
    GROUPID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICEID_FIELD_NUMBER: _ClassVar[int]
    DELAYSECONDS_FIELD_NUMBER: _ClassVar[int]
    WANTSRECEIPTS_FIELD_NUMBER: _ClassVar[int]
    PEERID_FIELD_NUMBER: _ClassVar[int]
    BEFORESEQ_FIELD_NUMBER: _ClassVar[int]
    AFTERSEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    PRESENCEUSERIDS_FIELD_NUMBER: _ClassVar[int]
    PRESENCEUNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    reqMsg: str
    requestId: int
    cmd: BaseCommand
    properties: _containers.ScalarMap[str, str]
    batchReqMsg: _containers.RepeatedScalarFieldContainer[str]
    clientMsgId: int
    ackSeq: int
    groupId: str
    token: str
    deviceId: str
    delaySeconds: int
    wantsReceipts: bool
    peerId: int
    beforeSeq: int
    afterSeq: int
    limit: int
    keyword: str
    presenceUserIds: _containers.RepeatedScalarFieldContainer[int]
    presenceUnsubscribe: bool
    def __init__(self, reqMsg: _Optional[str] = ..., requestId: _Optional[int] = ..., cmd: _Optional[_Union[BaseCommand, str]] = ..., properties: _Optional[_Mapping[str, str]] = ..., batchReqMsg: _Optional[_Iterable[str]] = ..., clientMsgId: _Optional[int] = ..., ackSeq: _Optional[int] = ..., groupId: _Optional[str] = ..., token: _Optional[str] = ..., deviceId: _Optional[str] = ..., delaySeconds: _Optional[int] = ..., wantsReceipts: _Optional[bool] = ..., peerId: _Optional[int] = ..., beforeSeq: _Optional[int] = ..., afterSeq: _Optional[int] = ..., limit: _Optional[int] = ..., keyword: _Optional[str] = ..., presenceUserIds: _Optional[_Iterable[int]] = ..., presenceUnsubscribe: _Optional[bool] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("resMsg", "responseId", "cmd", "properties", "batchResMsg", "msgId", "seq", "timestamp", "code", "clientMsgId", "groupId", "heartbeatSeconds", "truncated", "ackedSeq", "notice", "msgIds", "status", "messages", "hasMore", "nextSeq", "presenceUserIds", "presenceOnline", "toUserId")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RESMSG_FIELD_NUMBER: _ClassVar[int]
    RESPONSEID_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    BATCHRESMSG_FIELD_NUMBER: _ClassVar[int]
    MSGID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    CLIENTMSGID_FIELD_NUMBER: _ClassVar[int]
    GROUPID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEATSECONDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ACKEDSEQ_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    MSGIDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HASMORE_FIELD_NUMBER: _ClassVar[int]
    NEXTSEQ_FIELD_NUMBER: _ClassVar[int]
    PRESENCEUSERIDS_FIELD_NUMBER: _ClassVar[int]
    PRESENCEONLINE_FIELD_NUMBER: _ClassVar[int]
    TOUSERID_FIELD_NUMBER: _ClassVar[int]
    resMsg: str
    responseId: int
    cmd: BaseCommand
    properties: _containers.ScalarMap[str, str]
    batchResMsg: _containers.RepeatedScalarFieldContainer[str]
    msgId: int
    seq: int
    timestamp: int
    code: int
    clientMsgId: int
    groupId: str
    heartbeatSeconds: int
    truncated: bool
    ackedSeq: int
    notice: bool
    msgIds: _containers.RepeatedScalarFieldContainer[int]
    status: MessageStatus
    messages: _containers.RepeatedScalarFieldContainer[bytes]
    hasMore: bool
    nextSeq: int
    presenceUserIds: _containers.RepeatedScalarFieldContainer[int]
    presenceOnline: _containers.RepeatedScalarFieldContainer[bool]
    toUserId: int
    def __init__(self, resMsg: _Optional[str] = ..., responseId: _Optional[int] = ..., cmd: _Optional[_Union[BaseCommand, str]] = ..., properties: _Optional[_Mapping[str, str]] = ..., batchResMsg: _Optional[_Iterable[str]] = ..., msgId: _Optional[int] = ..., seq: _Optional[int] = ..., timestamp: _Optional[int] = ..., code: _Optional[int] = ..., clientMsgId: _Optional[int] = ..., groupId: _Optional[str] = ..., heartbeatSeconds: _Optional[int] = ..., truncated: _Optional[bool] = ..., ackedSeq: _Optional[int] = ..., notice: _Optional[bool] = ..., msgIds: _Optional[_Iterable[int]] = ..., status: _Optional[_Union[MessageStatus, str]] = ..., messages: _Optional[_Iterable[bytes]] = ..., hasMore: _Optional[bool] = ..., nextSeq: _Optional[int] = ..., presenceUserIds: _Optional[_Iterable[int]] = ..., presenceOnline: _Optional[_Iterable[bool]] = ..., toUserId: _Optional[int] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("messages", "receiverIds", "kick", "firstSeqs", "replay", "statuses", "presenceServer", "presenceChanges")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RECEIVERIDS_FIELD_NUMBER: _ClassVar[int]
    KICK_FIELD_NUMBER: _ClassVar[int]
    FIRSTSEQS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    PRESENCESERVER_FIELD_NUMBER: _ClassVar[int]
    PRESENCECHANGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedScalarFieldContainer[bytes]
    receiverIds: _containers.RepeatedScalarFieldContainer[int]
    kick: bool
    firstSeqs: _containers.RepeatedScalarFieldContainer[int]
    replay: bool
    statuses: _containers.RepeatedScalarFieldContainer[bytes]
    presenceServer: str
    presenceChanges: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, messages: _Optional[_Iterable[bytes]] = ..., receiverIds: _Optional[_Iterable[int]] = ..., kick: _Optional[bool] = ..., firstSeqs: _Optional[_Iterable[int]] = ..., replay: _Optional[bool] = ..., statuses: _Optional[_Iterable[bytes]] = ..., presenceServer: _Optional[str] = ..., presenceChanges: _Optional[_Iterable[int]] = ...) -> None: ...
