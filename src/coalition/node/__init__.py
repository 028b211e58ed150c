"""The application: the node's service (the one write path, points operations, ledger
reads), the sealer, configuration and manifest, partner messaging and the coalition
features. Imports nothing of ``api`` or ``runtime``."""
