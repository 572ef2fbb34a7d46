"""The HTTP side of the ASGI application: Django's handler, minus three per-request costs.

Every view here is synchronous (the ORM is), and under ASGI Django pays for that three times:

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
- Around the view it hops to a thread twice more (the `request_started` receivers, and
  `response.close()` with the `request_finished` ones) and starts two tasks to watch for a
  disconnect that a synchronous view cannot act on. `SyncChainASGIHandler.handle` does the whole
  request, signals, view and response body, in one hop, and sends the response from the loop.

Together they take single-point ingestion from about 150 to over 400 requests/s on one daphne
process (bench/ingest.py); the last one, on uvicorn, the empty DRF 200 from ~1,100 to ~1,500
requests/s (bench/hot_path.py). WebSocket connections are not touched.
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import connections
from django.http import FileResponse
from django.urls import set_script_prefix

IDLE_EXECUTORS_KEPT = 32


class SyncChainASGIHandler(ASGIHandler):
    """Django's ASGI handler with each request served synchronously, in one thread hop."""

    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)
        # Wrapped once: building a SyncToAsync inspects the function, per call it is 2% of a
        # single-point write's CPU (py-spy).
        self._respond_in_thread = sync_to_async(self._respond, thread_sensitive=True)
        self._read_in_thread = sync_to_async(_read_chunk, thread_sensitive=True)
        self._close_in_thread = sync_to_async(_close, thread_sensitive=True)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        try:
            response = await self._respond_in_thread(scope, body_file)
            if not response.streaming:
                await self.send_response(response, send)
                return
            try:
                if response.is_async:
                    await self.send_response(response, send)
                else:
                    await self._send_streamed(response, send)
            finally:
                await self._close_in_thread(response)
        finally:
            body_file.close()

    async def _send_streamed(self, response, send) -> None:
        """A synchronous streaming response (the CSV export), read in the request's thread
        STREAM_CHUNK_BYTES at a time. Django's own send_response would first read all of it
        into a list, in memory: a whole ten-million-point run."""
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": _headers(response)})  # fmt: skip
        parts = iter(response)
        while chunk := await self._read_in_thread(parts):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def _respond(self, scope, body_file):
        """In the request's thread: what Django does around the view, synchronously. A
        non-streaming response is closed here (its body is already bytes), which sends
        `request_finished` and hands the database connection back to the pool."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        if not response.streaming:
            response.content  # noqa: B018 - rendered here, in the thread
            response.close()
        return response


STREAM_CHUNK_BYTES = 64 * 1024


def _close(response) -> None:
    response.close()


def _read_chunk(parts) -> bytes:
    """The next STREAM_CHUNK_BYTES or so of a streaming response (b"" at its end)."""
    chunk, size = [], 0
    for part in parts:
        chunk.append(part)
        size += len(part)
        if size >= STREAM_CHUNK_BYTES:
            break
    return b"".join(chunk)


def _headers(response) -> list[tuple[bytes, bytes]]:
    """Response headers and cookies as ASGI wants them (as Django's send_response builds them)."""
    headers = [
        (header.encode("ascii"), value.encode("latin1")) for header, value in response.items()
    ]
    for cookie in response.cookies.values():
        headers.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
    return headers


class ReusedRequestThreads:
    """ASGI middleware: each in-flight HTTP request gets a reused single-thread executor."""

    def __init__(self, app, *, keep: int = IDLE_EXECUTORS_KEPT):
        self.app = app
        self.keep = keep
        self.idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        with self.borrowed() as executor:
            async with ThreadSensitiveContext(executor=executor):
                await self.app(scope, receive, send)

    @contextmanager
    def borrowed(self) -> Iterator[ThreadPoolExecutor]:
        """A request's thread, handed back to the free list when the request is done."""
        executor = self.idle.pop() if self.idle else self._new_executor()
        finished = False
        try:
            yield executor
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
    """What `get_asgi_application()` returns, with the changes above, and agents' point
    writes served the short way (`convergence.asgi.PointWriteShortcut`)."""
    django.setup(set_prefix=False)
    from convergence.asgi import PointWriteShortcut  # needs the apps loaded

    threads = ReusedRequestThreads(SyncChainASGIHandler())
    return PointWriteShortcut(threads, threads=threads)
