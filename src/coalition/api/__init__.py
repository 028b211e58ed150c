"""Transports only: gRPC servicers and clients, the FastAPI app, authentication.

Everything here is thin: it authenticates, converts wire types and calls the node's
application service (``coalition.node.service``), which holds every rule.
"""
