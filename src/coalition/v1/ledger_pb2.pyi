from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedHeader(_message.Message):
    __slots__ = ("signed_header_json",)
    SIGNED_HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    signed_header_json: bytes
    def __init__(self, signed_header_json: _Optional[bytes] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("entry_json", "log_index")
    ENTRY_JSON_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    entry_json: bytes
    log_index: int
    def __init__(self, entry_json: _Optional[bytes] = ..., log_index: _Optional[int] = ...) -> None: ...

class GetLatestHeaderRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LatestHeader(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: SignedHeader
    def __init__(self, header: _Optional[_Union[SignedHeader, _Mapping]] = ...) -> None: ...

class GetHeadersRequest(_message.Message):
    __slots__ = ("start", "limit")
    START_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    start: int
    limit: int
    def __init__(self, start: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class HeaderList(_message.Message):
    __slots__ = ("headers",)
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    headers: _containers.RepeatedCompositeFieldContainer[SignedHeader]
    def __init__(self, headers: _Optional[_Iterable[_Union[SignedHeader, _Mapping]]] = ...) -> None: ...

class GetBlockRequest(_message.Message):
    __slots__ = ("height",)
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    height: int
    def __init__(self, height: _Optional[int] = ...) -> None: ...

class Block(_message.Message):
    __slots__ = ("header", "entry_json")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ENTRY_JSON_FIELD_NUMBER: _ClassVar[int]
    header: SignedHeader
    entry_json: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, header: _Optional[_Union[SignedHeader, _Mapping]] = ..., entry_json: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetEntryRequest(_message.Message):
    __slots__ = ("entry_id",)
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    def __init__(self, entry_id: _Optional[str] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("entry_id", "tree_size")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    tree_size: int
    def __init__(self, entry_id: _Optional[str] = ..., tree_size: _Optional[int] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("first_height", "second_height")
    FIRST_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SECOND_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    first_height: int
    second_height: int
    def __init__(self, first_height: _Optional[int] = ..., second_height: _Optional[int] = ...) -> None: ...

class Proof(_message.Message):
    __slots__ = ("proof_json",)
    PROOF_JSON_FIELD_NUMBER: _ClassVar[int]
    proof_json: bytes
    def __init__(self, proof_json: _Optional[bytes] = ...) -> None: ...

class WatchHeadersRequest(_message.Message):
    __slots__ = ("after_height",)
    AFTER_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    after_height: int
    def __init__(self, after_height: _Optional[int] = ...) -> None: ...

class GetPublicKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PublicKey(_message.Message):
    __slots__ = ("program", "public_key_pem")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    program: str
    public_key_pem: str
    def __init__(self, program: _Optional[str] = ..., public_key_pem: _Optional[str] = ...) -> None: ...
