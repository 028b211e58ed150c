"""The composition root: ``wiring`` builds a running node from its configuration (store,
service, coalition features, transports) and ``runner`` runs it (signals, start and stop
order, scheduled jobs). The only package that knows every other one."""
