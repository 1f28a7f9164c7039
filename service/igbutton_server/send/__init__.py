"""The send path: validate, translate, idempotency, rate limit, Graph client, gRPC service.

The parts are wired together in ``path`` (:class:`~igbutton_server.send.path.SendPath`).
Kept free of imports: the storage engines import ``send.outcome``, and the package's own
import must not pull the whole send path (and the storage contract) in with it.
"""
