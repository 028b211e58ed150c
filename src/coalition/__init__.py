"""Coalition: cross-brand loyalty points on signed, hash-chained RFC 9162 Merkle ledgers."""

__version__ = "0.1.0"
