from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConvertRequest(_message.Message):
    __slots__ = ("member_id", "to_program", "to_member_id", "amount", "idempotency_key")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    TO_PROGRAM_FIELD_NUMBER: _ClassVar[int]
    TO_MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    to_program: str
    to_member_id: str
    amount: int
    idempotency_key: str
    def __init__(self, member_id: _Optional[str] = ..., to_program: _Optional[str] = ..., to_member_id: _Optional[str] = ..., amount: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GetConversionRequest(_message.Message):
    __slots__ = ("member_id", "conversion_id")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_ID_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    conversion_id: str
    def __init__(self, member_id: _Optional[str] = ..., conversion_id: _Optional[str] = ...) -> None: ...

class QuoteRequest(_message.Message):
    __slots__ = ("member_id", "to_program", "amount")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    TO_PROGRAM_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    to_program: str
    amount: int
    def __init__(self, member_id: _Optional[str] = ..., to_program: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class Conversion(_message.Message):
    __slots__ = ("id", "member_id", "to_program", "to_member_id", "agreement_id", "agreement_version", "amount", "fee", "net", "credit", "value_minor", "currency", "status", "reason", "created_at", "out_entry", "final_entry")
    ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    TO_PROGRAM_FIELD_NUMBER: _ClassVar[int]
    TO_MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    NET_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    VALUE_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    OUT_ENTRY_FIELD_NUMBER: _ClassVar[int]
    FINAL_ENTRY_FIELD_NUMBER: _ClassVar[int]
    id: str
    member_id: str
    to_program: str
    to_member_id: str
    agreement_id: str
    agreement_version: int
    amount: int
    fee: int
    net: int
    credit: int
    value_minor: int
    currency: str
    status: str
    reason: str
    created_at: str
    out_entry: str
    final_entry: str
    def __init__(self, id: _Optional[str] = ..., member_id: _Optional[str] = ..., to_program: _Optional[str] = ..., to_member_id: _Optional[str] = ..., agreement_id: _Optional[str] = ..., agreement_version: _Optional[int] = ..., amount: _Optional[int] = ..., fee: _Optional[int] = ..., net: _Optional[int] = ..., credit: _Optional[int] = ..., value_minor: _Optional[int] = ..., currency: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., created_at: _Optional[str] = ..., out_entry: _Optional[str] = ..., final_entry: _Optional[str] = ...) -> None: ...

class ConversionQuote(_message.Message):
    __slots__ = ("to_program", "agreement_id", "agreement_version", "amount", "fee", "net", "credit", "value_minor", "currency", "rate_num", "rate_den", "daily_cap_points", "converted_today")
    TO_PROGRAM_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    NET_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    VALUE_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    RATE_NUM_FIELD_NUMBER: _ClassVar[int]
    RATE_DEN_FIELD_NUMBER: _ClassVar[int]
    DAILY_CAP_POINTS_FIELD_NUMBER: _ClassVar[int]
    CONVERTED_TODAY_FIELD_NUMBER: _ClassVar[int]
    to_program: str
    agreement_id: str
    agreement_version: int
    amount: int
    fee: int
    net: int
    credit: int
    value_minor: int
    currency: str
    rate_num: int
    rate_den: int
    daily_cap_points: int
    converted_today: int
    def __init__(self, to_program: _Optional[str] = ..., agreement_id: _Optional[str] = ..., agreement_version: _Optional[int] = ..., amount: _Optional[int] = ..., fee: _Optional[int] = ..., net: _Optional[int] = ..., credit: _Optional[int] = ..., value_minor: _Optional[int] = ..., currency: _Optional[str] = ..., rate_num: _Optional[int] = ..., rate_den: _Optional[int] = ..., daily_cap_points: _Optional[int] = ..., converted_today: _Optional[int] = ...) -> None: ...

class ProposeAgreementRequest(_message.Message):
    __slots__ = ("agreement_json",)
    AGREEMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    agreement_json: bytes
    def __init__(self, agreement_json: _Optional[bytes] = ...) -> None: ...

class SignedAgreement(_message.Message):
    __slots__ = ("signed_agreement_json",)
    SIGNED_AGREEMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    signed_agreement_json: bytes
    def __init__(self, signed_agreement_json: _Optional[bytes] = ...) -> None: ...

class ListAgreementsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgreementSummary(_message.Message):
    __slots__ = ("id", "version", "from_program", "to_program", "valid_from", "valid_until", "in_force", "signed_agreement_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FROM_PROGRAM_FIELD_NUMBER: _ClassVar[int]
    TO_PROGRAM_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_AGREEMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    from_program: str
    to_program: str
    valid_from: str
    valid_until: str
    in_force: bool
    signed_agreement_json: bytes
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ..., from_program: _Optional[str] = ..., to_program: _Optional[str] = ..., valid_from: _Optional[str] = ..., valid_until: _Optional[str] = ..., in_force: _Optional[bool] = ..., signed_agreement_json: _Optional[bytes] = ...) -> None: ...

class AgreementList(_message.Message):
    __slots__ = ("agreements",)
    AGREEMENTS_FIELD_NUMBER: _ClassVar[int]
    agreements: _containers.RepeatedCompositeFieldContainer[AgreementSummary]
    def __init__(self, agreements: _Optional[_Iterable[_Union[AgreementSummary, _Mapping]]] = ...) -> None: ...
