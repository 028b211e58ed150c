"""Loyalty rules of one program, pure: no I/O, no clock, no randomness.

Callers pass the time and the entry id in; every state change is described by an entry
body (``operations``) and applied by exactly one function (``state.apply_entry``), which
the node uses on its database path and the auditor uses to replay a chain.
"""
