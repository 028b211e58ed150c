from coalition.v1 import ledger_pb2 as _ledger_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WriteReply(_message.Message):
    __slots__ = ("entry_json", "replayed")
    ENTRY_JSON_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    entry_json: bytes
    replayed: bool
    def __init__(self, entry_json: _Optional[bytes] = ..., replayed: _Optional[bool] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("member_id", "idempotency_key")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    idempotency_key: str
    def __init__(self, member_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class EarnPurchaseRequest(_message.Message):
    __slots__ = ("member_id", "reference", "spend_minor", "category", "idempotency_key")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SPEND_MINOR_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    reference: str
    spend_minor: int
    category: str
    idempotency_key: str
    def __init__(self, member_id: _Optional[str] = ..., reference: _Optional[str] = ..., spend_minor: _Optional[int] = ..., category: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class EarnRewardRequest(_message.Message):
    __slots__ = ("member_id", "event", "reference", "idempotency_key")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    event: str
    reference: str
    idempotency_key: str
    def __init__(self, member_id: _Optional[str] = ..., event: _Optional[str] = ..., reference: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class PurchaseRow(_message.Message):
    __slots__ = ("member_id", "reference", "spend_minor", "category", "idempotency_key")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SPEND_MINOR_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    reference: str
    spend_minor: int
    category: str
    idempotency_key: str
    def __init__(self, member_id: _Optional[str] = ..., reference: _Optional[str] = ..., spend_minor: _Optional[int] = ..., category: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RowError(_message.Message):
    __slots__ = ("row", "idempotency_key", "message")
    ROW_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    row: int
    idempotency_key: str
    message: str
    def __init__(self, row: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class BulkSummary(_message.Message):
    __slots__ = ("accepted", "replayed", "rejected")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    replayed: int
    rejected: _containers.RepeatedCompositeFieldContainer[RowError]
    def __init__(self, accepted: _Optional[int] = ..., replayed: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RowError, _Mapping]]] = ...) -> None: ...

class ReversePurchaseRequest(_message.Message):
    __slots__ = ("member_id", "reference", "idempotency_key")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    reference: str
    idempotency_key: str
    def __init__(self, member_id: _Optional[str] = ..., reference: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RedeemRequest(_message.Message):
    __slots__ = ("member_id", "amount", "reference", "idempotency_key")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    amount: int
    reference: str
    idempotency_key: str
    def __init__(self, member_id: _Optional[str] = ..., amount: _Optional[int] = ..., reference: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("member_id", "to_member_id", "amount", "note", "idempotency_key")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    TO_MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    to_member_id: str
    amount: int
    note: str
    idempotency_key: str
    def __init__(self, member_id: _Optional[str] = ..., to_member_id: _Optional[str] = ..., amount: _Optional[int] = ..., note: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class AdjustRequest(_message.Message):
    __slots__ = ("member_id", "amount", "operator", "note", "idempotency_key")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    amount: int
    operator: str
    note: str
    idempotency_key: str
    def __init__(self, member_id: _Optional[str] = ..., amount: _Optional[int] = ..., operator: _Optional[str] = ..., note: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("member_id", "earn_entry_id", "operator", "note", "idempotency_key")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    EARN_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    earn_entry_id: str
    operator: str
    note: str
    idempotency_key: str
    def __init__(self, member_id: _Optional[str] = ..., earn_entry_id: _Optional[str] = ..., operator: _Optional[str] = ..., note: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RunExpiryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExpirySummary(_message.Message):
    __slots__ = ("entries", "points")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    entries: int
    points: int
    def __init__(self, entries: _Optional[int] = ..., points: _Optional[int] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("member_id",)
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    def __init__(self, member_id: _Optional[str] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("member_id", "account", "spendable", "pending", "held", "tier", "qualifying")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    SPENDABLE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    QUALIFYING_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    account: str
    spendable: int
    pending: int
    held: int
    tier: str
    qualifying: int
    def __init__(self, member_id: _Optional[str] = ..., account: _Optional[str] = ..., spendable: _Optional[int] = ..., pending: _Optional[int] = ..., held: _Optional[int] = ..., tier: _Optional[str] = ..., qualifying: _Optional[int] = ...) -> None: ...

class ListLotsRequest(_message.Message):
    __slots__ = ("member_id",)
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    def __init__(self, member_id: _Optional[str] = ...) -> None: ...

class Lot(_message.Message):
    __slots__ = ("id", "amount", "remaining", "qualifying", "earned_at", "available_at", "expires_at", "ref", "reversed")
    ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    QUALIFYING_FIELD_NUMBER: _ClassVar[int]
    EARNED_AT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    REVERSED_FIELD_NUMBER: _ClassVar[int]
    id: str
    amount: int
    remaining: int
    qualifying: int
    earned_at: str
    available_at: str
    expires_at: str
    ref: str
    reversed: bool
    def __init__(self, id: _Optional[str] = ..., amount: _Optional[int] = ..., remaining: _Optional[int] = ..., qualifying: _Optional[int] = ..., earned_at: _Optional[str] = ..., available_at: _Optional[str] = ..., expires_at: _Optional[str] = ..., ref: _Optional[str] = ..., reversed: _Optional[bool] = ...) -> None: ...

class LotList(_message.Message):
    __slots__ = ("lots",)
    LOTS_FIELD_NUMBER: _ClassVar[int]
    lots: _containers.RepeatedCompositeFieldContainer[Lot]
    def __init__(self, lots: _Optional[_Iterable[_Union[Lot, _Mapping]]] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("member_id", "limit")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    limit: int
    def __init__(self, member_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class History(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[_ledger_pb2.Entry, _Mapping]]] = ...) -> None: ...
