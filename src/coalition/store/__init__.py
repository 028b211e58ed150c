"""Storage: one module per aggregate, each with its SQLModel tables and their queries.

``ledger`` (entries, blocks, tree nodes, the log's head), ``leases`` (which process of a
node seals), ``members`` (accounts, lots), ``agreements``,
``conversions`` (with the outbox), ``redemptions`` (holds), ``statements``, ``witness``,
``api_keys`` (keys issued at run time)
and ``partners`` (the replay guard); ``columns`` is how values are encoded, ``db`` makes
engines and ``schema`` migrates. Every query takes the caller's ``Connection``, so the
caller decides the transaction. SQLite (WAL) is the embedded default; PostgreSQL is
chosen by URL. Hot paths use SQLAlchemy Core bulk statements on the tables SQLModel
defines.
"""
