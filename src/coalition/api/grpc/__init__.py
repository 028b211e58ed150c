"""The node's gRPC transports: one servicer module per service of ``proto/coalition/v1``
(built on ``kit``), ``server.serve_grpc`` (the member/operator server), ``partner`` (the
mutual-TLS partner server and the partner transport) and ``client`` (``NodeClient``)."""
