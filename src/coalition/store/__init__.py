"""Storage: SQLModel tables and the repository the node writes through.

SQLite (WAL) is the embedded default; PostgreSQL is chosen by URL. Hot paths use
SQLAlchemy Core bulk statements on the tables SQLModel defines.
"""
