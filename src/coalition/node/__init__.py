"""The running node: application service, sealer, configuration."""
