"""Capture: turning what a service already does into audit events, shipped in the background.

``shipper`` sends events in batches with idempotency keys under an explicit
full-buffer policy, ``spool`` keeps them on disk across restarts, ``handler`` is
the ``logging`` handler and ``interceptor`` the gRPC server interceptor
(docs/capture.md).
"""
