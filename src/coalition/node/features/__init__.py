"""The coalition features of a node, one module each: agreements, conversions (with the
outbox), cross-brand redemptions, settlement and the witness (docs/coalition.md)."""
