"""Alembic's migration scripts for the node's database (``versions/``, one file a revision).

``coalition.store.schema`` runs them; nobody needs an ``alembic.ini``.
"""
