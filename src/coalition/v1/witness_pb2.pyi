from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetWitnessesRequest(_message.Message):
    __slots__ = ("height",)
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    height: int
    def __init__(self, height: _Optional[int] = ...) -> None: ...

class Cosignature(_message.Message):
    __slots__ = ("witness", "timestamp", "cosignature")
    WITNESS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    COSIGNATURE_FIELD_NUMBER: _ClassVar[int]
    witness: str
    timestamp: int
    cosignature: str
    def __init__(self, witness: _Optional[str] = ..., timestamp: _Optional[int] = ..., cosignature: _Optional[str] = ...) -> None: ...

class WitnessStatus(_message.Message):
    __slots__ = ("height", "header_hash", "checkpoint", "note", "cosigners", "quorum", "witnessed")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    HEADER_HASH_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    COSIGNERS_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    WITNESSED_FIELD_NUMBER: _ClassVar[int]
    height: int
    header_hash: str
    checkpoint: str
    note: str
    cosigners: _containers.RepeatedCompositeFieldContainer[Cosignature]
    quorum: int
    witnessed: bool
    def __init__(self, height: _Optional[int] = ..., header_hash: _Optional[str] = ..., checkpoint: _Optional[str] = ..., note: _Optional[str] = ..., cosigners: _Optional[_Iterable[_Union[Cosignature, _Mapping]]] = ..., quorum: _Optional[int] = ..., witnessed: _Optional[bool] = ...) -> None: ...

class ListEquivocationsRequest(_message.Message):
    __slots__ = ("program",)
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    program: str
    def __init__(self, program: _Optional[str] = ...) -> None: ...

class Equivocation(_message.Message):
    __slots__ = ("id", "program", "height", "kind", "reason", "first_signed_header_json", "second_signed_header_json", "detected_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIRST_SIGNED_HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    SECOND_SIGNED_HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    program: str
    height: int
    kind: str
    reason: str
    first_signed_header_json: bytes
    second_signed_header_json: bytes
    detected_at: str
    def __init__(self, id: _Optional[int] = ..., program: _Optional[str] = ..., height: _Optional[int] = ..., kind: _Optional[str] = ..., reason: _Optional[str] = ..., first_signed_header_json: _Optional[bytes] = ..., second_signed_header_json: _Optional[bytes] = ..., detected_at: _Optional[str] = ...) -> None: ...

class EquivocationList(_message.Message):
    __slots__ = ("equivocations",)
    EQUIVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    equivocations: _containers.RepeatedCompositeFieldContainer[Equivocation]
    def __init__(self, equivocations: _Optional[_Iterable[_Union[Equivocation, _Mapping]]] = ...) -> None: ...

class ListFollowersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Follower(_message.Message):
    __slots__ = ("program", "verified_height", "halted", "last_error")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    HALTED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    program: str
    verified_height: int
    halted: bool
    last_error: str
    def __init__(self, program: _Optional[str] = ..., verified_height: _Optional[int] = ..., halted: _Optional[bool] = ..., last_error: _Optional[str] = ...) -> None: ...

class FollowerList(_message.Message):
    __slots__ = ("followers",)
    FOLLOWERS_FIELD_NUMBER: _ClassVar[int]
    followers: _containers.RepeatedCompositeFieldContainer[Follower]
    def __init__(self, followers: _Optional[_Iterable[_Union[Follower, _Mapping]]] = ...) -> None: ...
