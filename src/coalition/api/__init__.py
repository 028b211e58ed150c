"""Transports only: ``http`` (the member and operator FastAPI app, one router per route
group), ``grpc`` (one servicer per service, the member/operator and partner servers, the
partner transport, ``NodeClient``) and ``errors`` (the one table between core errors and
HTTP statuses / gRPC codes, both ways).

Everything here is thin: it authenticates (``coalition.node.auth``), converts wire types
and calls the node's services and features, which hold every rule. Nothing here imports
``coalition.runtime``: the composition root builds the transports, not the other way.
"""
