"""What the tests share and the wheel never ships: clocks, databases, in-process nodes
built by the composition root (``runtime.wiring``), and coalitions of ``coalition run``
processes (``demo.processes``).

Importable as ``support`` from every test (pytest puts ``tests/`` on ``sys.path`` for
``tests/conftest.py``); a script that needs it adds the repository's ``tests/`` folder
to ``sys.path`` itself.
"""
