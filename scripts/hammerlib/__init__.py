"""The parts of ``scripts/hammer.py``: the coalition it runs (``cluster``, on SQLite or on
a private PostgreSQL instance from ``tests/support/private_postgres.py``), the load and
what it was told (``load``), the nemesis (``nemesis``) and the checks after the faults
healed (``checks``).

Not a package of the product: the hammer imports it with ``scripts/`` and ``tests/`` on
``sys.path``.
"""
