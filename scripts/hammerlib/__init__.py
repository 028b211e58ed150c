"""The parts of ``scripts/hammer.py``: the coalition it runs (``cluster``), its own
PostgreSQL instance (``postgres``), the load and what it was told (``load``), the
nemesis (``nemesis``) and the checks after the faults healed (``checks``).

Not a package of the product: the hammer imports it with ``scripts/`` on ``sys.path``.
"""
