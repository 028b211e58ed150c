"""Operator files: key generation and key files (``keygen``, ``keyfiles``) and the
coalition's TLS material (``tls``). Files only: nothing here runs a server."""
