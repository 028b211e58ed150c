from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuthorizeRedemptionRequest(_message.Message):
    __slots__ = ("program", "member_id", "amount", "reference", "expires_in_s", "idempotency_key")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    program: str
    member_id: str
    amount: int
    reference: str
    expires_in_s: int
    idempotency_key: str
    def __init__(self, program: _Optional[str] = ..., member_id: _Optional[str] = ..., amount: _Optional[int] = ..., reference: _Optional[str] = ..., expires_in_s: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RedemptionRef(_message.Message):
    __slots__ = ("hold_id",)
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    def __init__(self, hold_id: _Optional[str] = ...) -> None: ...

class PartnerRedemption(_message.Message):
    __slots__ = ("hold_id", "program", "member_id", "amount", "reference", "status", "created_at", "expires_at", "agreement_id", "agreement_version", "value_minor", "currency", "receipt_entry", "reason", "authorization_json", "capture_json", "release_json")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    VALUE_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ENTRY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_JSON_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_JSON_FIELD_NUMBER: _ClassVar[int]
    RELEASE_JSON_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    program: str
    member_id: str
    amount: int
    reference: str
    status: str
    created_at: str
    expires_at: str
    agreement_id: str
    agreement_version: int
    value_minor: int
    currency: str
    receipt_entry: str
    reason: str
    authorization_json: bytes
    capture_json: bytes
    release_json: bytes
    def __init__(self, hold_id: _Optional[str] = ..., program: _Optional[str] = ..., member_id: _Optional[str] = ..., amount: _Optional[int] = ..., reference: _Optional[str] = ..., status: _Optional[str] = ..., created_at: _Optional[str] = ..., expires_at: _Optional[str] = ..., agreement_id: _Optional[str] = ..., agreement_version: _Optional[int] = ..., value_minor: _Optional[int] = ..., currency: _Optional[str] = ..., receipt_entry: _Optional[str] = ..., reason: _Optional[str] = ..., authorization_json: _Optional[bytes] = ..., capture_json: _Optional[bytes] = ..., release_json: _Optional[bytes] = ...) -> None: ...

class ReleaseExpiredHoldsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseExpiredHoldsReply(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class ProposeStatementRequest(_message.Message):
    __slots__ = ("partner", "start", "end")
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    partner: str
    start: str
    end: str
    def __init__(self, partner: _Optional[str] = ..., start: _Optional[str] = ..., end: _Optional[str] = ...) -> None: ...

class SettlementStatement(_message.Message):
    __slots__ = ("id", "parties", "start", "end", "currency", "signed_json", "entry_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SIGNED_JSON_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    parties: _containers.RepeatedScalarFieldContainer[str]
    start: str
    end: str
    currency: str
    signed_json: bytes
    entry_id: str
    def __init__(self, id: _Optional[str] = ..., parties: _Optional[_Iterable[str]] = ..., start: _Optional[str] = ..., end: _Optional[str] = ..., currency: _Optional[str] = ..., signed_json: _Optional[bytes] = ..., entry_id: _Optional[str] = ...) -> None: ...

class ListStatementsRequest(_message.Message):
    __slots__ = ("partner",)
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    partner: str
    def __init__(self, partner: _Optional[str] = ...) -> None: ...

class StatementList(_message.Message):
    __slots__ = ("statements",)
    STATEMENTS_FIELD_NUMBER: _ClassVar[int]
    statements: _containers.RepeatedCompositeFieldContainer[SettlementStatement]
    def __init__(self, statements: _Optional[_Iterable[_Union[SettlementStatement, _Mapping]]] = ...) -> None: ...

class GetNettingRequest(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: str
    end: str
    def __init__(self, start: _Optional[str] = ..., end: _Optional[str] = ...) -> None: ...

class NetPosition(_message.Message):
    __slots__ = ("program", "amount")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    program: str
    amount: int
    def __init__(self, program: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class NetPayment(_message.Message):
    __slots__ = ("payer", "payee", "amount")
    PAYER_FIELD_NUMBER: _ClassVar[int]
    PAYEE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    payer: str
    payee: str
    amount: int
    def __init__(self, payer: _Optional[str] = ..., payee: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class NettingReport(_message.Message):
    __slots__ = ("start", "end", "currency", "positions", "payments", "statements", "unreachable", "csv", "json")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    STATEMENTS_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    CSV_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    start: str
    end: str
    currency: str
    positions: _containers.RepeatedCompositeFieldContainer[NetPosition]
    payments: _containers.RepeatedCompositeFieldContainer[NetPayment]
    statements: _containers.RepeatedScalarFieldContainer[str]
    unreachable: _containers.RepeatedScalarFieldContainer[str]
    csv: str
    json: bytes
    def __init__(self, start: _Optional[str] = ..., end: _Optional[str] = ..., currency: _Optional[str] = ..., positions: _Optional[_Iterable[_Union[NetPosition, _Mapping]]] = ..., payments: _Optional[_Iterable[_Union[NetPayment, _Mapping]]] = ..., statements: _Optional[_Iterable[str]] = ..., unreachable: _Optional[_Iterable[str]] = ..., csv: _Optional[str] = ..., json: _Optional[bytes] = ...) -> None: ...
