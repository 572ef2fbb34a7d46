"""The HTTP side of the ASGI application: Django's handler, minus two per-request costs.

Every view here is synchronous (the ORM is), and under ASGI Django pays for that twice:

- It runs the middleware chain in async mode. Django's own middleware are `MiddlewareMixin`
  classes whose async mode hands each `process_request` and `process_response` to a thread and
  waits for it, and WhiteNoise is synchronous only: about twenty thread switches per request.
  `SyncChainASGIHandler` loads the chain in synchronous mode, as under WSGI, and calls it with a
  single `sync_to_async`: one switch in, one out.
- It gives each request a new `ThreadSensitiveContext`, which asgiref backs with a new
  single-thread executor: a thread started and joined per request, and a new thread-local
  database connection. `ReusedRequestThreads` hands each request an executor from a free list
  instead (asgiref's `ThreadSensitiveContext(executor=...)`), so each request still has a
  thread of its own, and threads and their connections are reused.

Together they take single-point ingestion from about 150 to over 400 requests/s on one daphne
process (bench/ingest.py). WebSocket connections are not touched.
"""

from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.db import connections

IDLE_EXECUTORS_KEPT = 32


class SyncChainASGIHandler(ASGIHandler):
    """Django's ASGI handler with the middleware chain and views run synchronously."""

    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)
        self._middleware_chain = sync_to_async(self._middleware_chain, thread_sensitive=True)


class ReusedRequestThreads:
    """ASGI middleware: each in-flight HTTP request gets a reused single-thread executor."""

    def __init__(self, app, *, keep: int = IDLE_EXECUTORS_KEPT):
        self.app = app
        self.keep = keep
        self.idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        executor = self.idle.pop() if self.idle else self._new_executor()
        finished = False
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.app(scope, receive, send)
            finished = True
        finally:
            # After an error or a cancellation the thread may still be busy with the request:
            # let it finish on its own, then hand its database connection back to the pool,
            # rather than queue the next request behind it.
            if finished and len(self.idle) < self.keep:
                self.idle.append(executor)
            else:
                executor.submit(connections.close_all)
                executor.shutdown(wait=False)

    @staticmethod
    def _new_executor() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="simsched-request")


def get_http_application():
    """What `get_asgi_application()` returns, with the two changes above."""
    django.setup(set_prefix=False)
    return ReusedRequestThreads(SyncChainASGIHandler())
