"""A fix of the Dapr Python SDK 1.18.3's streaming subscription start, applied on import."""

from dapr.clients.grpc.subscription import Subscription

_open_stream = Subscription.start


def _open_stream_active(subscription: Subscription) -> None:
    """Mark the stream active before gRPC reads its requests, not after (as dapr 1.18.3 does).

    Otherwise, about one start in two, the request iterator ends after its first request, daprd
    drops the stream (EOF) and the SDK reconnects; a message published within the next few seconds
    is read by the Redis poller of the dropped subscription and waits 60 s or more for redelivery.
    dapr 1.19 fixes this; dapr-agents 1.0.9 requires dapr < 1.19.
    """
    subscription._set_stream_active()
    _open_stream(subscription)


Subscription.start = _open_stream_active  # type: ignore[method-assign]
