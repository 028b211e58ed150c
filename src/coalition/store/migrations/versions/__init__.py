"""One module per schema revision; Alembic loads them by file name (``__init__`` skipped)."""
