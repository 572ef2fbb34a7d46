"""The short way of `POST /convergence/data` (convergence/asgi.py) through the server's own
ASGI application: the same answers as the long way through Django, header by header, and every
request it must not serve left to Django."""

import json
import logging
import re

import pytest
from channels.testing import HttpCommunicator
from django.core import signals
from rest_framework.authtoken.models import Token

from convergence.asgi import PointWriteShortcut
from convergence.models import ConvergencePoint
from simsched.asgi import application
from simsched.asgi_http import get_http_application
from simsched.observability.logs import JSONFormatter
from simsched.observability.metrics import POINTS_INGESTED
from tests.convergence.test_consumers import TIMEOUT, db
from tests.factories import make_simulation

pytestmark = pytest.mark.django_db(transaction=True)

ID = re.compile(r'"(id|simulation_id|simulation)":\d+')
STAMP = re.compile(r'"timestamp":"[^"]*"')


@pytest.fixture
def token(user):
    return Token.objects.get_or_create(user=user)[0].key


@pytest.fixture
def served_by():
    """The senders of `request_started`: which way each request went."""
    senders = []

    def seen(sender, **kwargs):
        senders.append(sender)

    signals.request_started.connect(seen)
    yield senders
    signals.request_started.disconnect(seen)


async def post(body, token=None, headers=(), path="/convergence/data", app=application):
    payload = json.dumps(body).encode()
    sent = [
        (b"host", b"testserver"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *([(b"authorization", f"Token {token}".encode())] if token else []),
        *headers,
    ]
    path, _, query = path.partition("?")
    communicator = HttpCommunicator(app, "POST", path, body=payload, headers=sent)
    communicator.scope["query_string"] = query.encode()
    response = await communicator.get_response(timeout=TIMEOUT)
    await communicator.wait(TIMEOUT)
    headers = {name.decode().lower(): value.decode() for name, value in response["headers"]}
    return response["status"], headers, response["body"]


def comparable(headers: dict, body: bytes) -> tuple[dict, str]:
    """Headers and body without what differs between two equal requests: ids, times, the
    request id and the length that follows from them."""
    kept = {k: v for k, v in headers.items() if k not in ("content-length", "x-request-id")}
    return kept, STAMP.sub('"timestamp":"T"', ID.sub(r'"\1":N', body.decode()))


def steps(simulation_id: int, foreign_id: int) -> dict[str, list[tuple[dict, str]]]:
    """Request sequences; each answer of one is compared with the long way's."""
    point = {"simulation_id": simulation_id, "step": 3, "loss_value": 0.5}
    return {
        "stored, again, then a different value": [
            (point, "token"),
            (point, "token"),
            ({**point, "loss_value": 0.25}, "token"),
        ],
        "the seed's body, without a step": [
            ({"simulation_id": simulation_id, "loss_value": 1.5}, "token"),
            ({"simulation_id": simulation_id, "loss_value": 1.25}, "token"),
        ],
        "a new series, and a timestamp": [
            ({**point, "metric": "val/loss", "timestamp": "2026-01-01T00:00:00Z"}, "token"),
        ],
        "an unknown simulation": [({**point, "simulation_id": 2**62}, "token")],
        "someone else's simulation": [({**point, "simulation_id": foreign_id}, "token")],
        "a bad value": [({**point, "loss_value": "0.5"}, "token")],
        "the batch's form": [({**point, "values": {"loss": 0.5}}, "token")],
        "no simulation": [({"loss_value": 0.5}, "token")],
        "an unknown token": [(point, "wrong")],
    }


CASES = list(steps(1, 2))


@pytest.mark.parametrize("case", CASES)
async def test_the_short_way_answers_as_the_long_way(
    case, user, other_user, token, settings, served_by
):
    foreign = await db(make_simulation, name="theirs", owner=other_user)
    answers = {}
    for shortcut in (False, True):
        settings.SIMSCHED_INGEST_SHORTCUT = shortcut
        mine = await db(make_simulation, name=f"mine-{shortcut}", owner=user)
        answers[shortcut] = []
        for body, who in steps(mine.pk, foreign.pk)[case]:
            status, headers, content = await post(body, token if who == "token" else "0" * 40)
            answers[shortcut].append((status, *comparable(headers, content)))
    assert answers[True] == answers[False]
    assert PointWriteShortcut not in served_by[: len(answers[False])]  # the long way, first


async def test_a_point_the_short_way_stores_is_stored_once_counted_and_answered_with_its_id(
    user, token, served_by
):
    simulation = await db(make_simulation, name="short", owner=user)
    before = POINTS_INGESTED.labels("convergence-add-point")._value.get()
    body = {"simulation_id": simulation.pk, "step": 7, "loss_value": 0.125}

    status, headers, content = await post(
        body, token, headers=[(b"x-request-id", b"agent-7.retry:1")]
    )
    again, _, _ = await post(body, token)

    assert (status, again) == (201, 200)
    assert served_by == [PointWriteShortcut, PointWriteShortcut]
    assert headers["x-request-id"] == "agent-7.retry:1"
    stored = await db(ConvergencePoint.objects.get, simulation=simulation)
    answer = json.loads(content)
    assert (answer["id"], answer["step"], answer["loss_value"]) == (stored.pk, 7, 0.125)
    assert POINTS_INGESTED.labels("convergence-add-point")._value.get() == before + 1


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/convergence/data?format=json", []),  # a query string
        ("/convergence/data", [(b"origin", b"http://elsewhere.example")]),  # CORS
        ("/convergence/data", [(b"accept", b"text/html")]),  # the browsable API
        ("/convergence/data", [(b"accept", b"application/json; indent=4")]),
    ],
)
async def test_requests_the_short_way_does_not_serve_go_through_django(
    path, headers, user, token, served_by
):
    simulation = await db(make_simulation, name="long", owner=user)
    body = {"simulation_id": simulation.pk, "step": 0, "loss_value": 0.5}

    status, _, _ = await post(body, token, headers=headers, path=path)

    assert status == 201
    assert PointWriteShortcut not in served_by


async def test_an_unknown_host_is_refused_as_django_refuses_it(user, token, served_by):
    simulation = await db(make_simulation, name="host", owner=user)
    body = {"simulation_id": simulation.pk, "step": 0, "loss_value": 0.5}

    status, _, _ = await post(body, token, headers=[(b"host", b"attacker.example")])

    assert status == 400
    assert PointWriteShortcut not in served_by
    assert not await db(ConvergencePoint.objects.filter(simulation=simulation).exists)


async def test_plain_http_where_https_is_required_is_redirected(user, token, settings, served_by):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 3600
    app = get_http_application()  # Django's middleware reads these settings once, at start
    simulation = await db(make_simulation, name="tls", owner=user)
    body = {"simulation_id": simulation.pk, "step": 0, "loss_value": 0.5}

    status, headers, _ = await post(body, token, app=app)
    assert status == 301
    assert headers["location"].startswith("https://")
    assert PointWriteShortcut not in served_by

    behind_tls = [(b"x-forwarded-proto", b"https")]
    status, headers, _ = await post(body, token, headers=behind_tls, app=app)
    assert status == 201
    assert served_by[-1] is PointWriteShortcut
    settings.SIMSCHED_INGEST_SHORTCUT = False
    again, long_headers, _ = await post(body, token, headers=behind_tls, app=app)
    assert again == 200
    hsts = "strict-transport-security"
    assert headers[hsts] == long_headers[hsts]
    assert headers[hsts].startswith("max-age=3600")


async def test_a_body_split_over_messages_and_over_the_limit_is_a_413(user, token, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64
    simulation = await db(make_simulation, name="big", owner=user)
    payload = json.dumps(
        {"simulation_id": simulation.pk, "step": 0, "loss_value": 0.5, "pad": "x" * 200}
    ).encode()
    communicator = HttpCommunicator(
        application,
        "POST",
        "/convergence/data",
        headers=[
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"authorization", f"Token {token}".encode()),
        ],
    )
    for start in range(0, len(payload), 50):
        more = start + 50 < len(payload)
        chunk = payload[start : start + 50]
        await communicator.send_input({"type": "http.request", "body": chunk, "more_body": more})
    response = await communicator.get_response(timeout=TIMEOUT)
    await communicator.wait(TIMEOUT)

    assert response["status"] == 413
    assert json.loads(response["body"])["error"]["code"] == "payload_too_large"
    assert not await db(ConvergencePoint.objects.filter(simulation=simulation).exists)


async def post_raw(headers: list, chunks: list[bytes], app=application):
    """A request exactly as given: these headers, the body in these messages."""
    communicator = HttpCommunicator(app, "POST", "/convergence/data", headers=headers)
    for index, chunk in enumerate(chunks):
        more = index < len(chunks) - 1
        await communicator.send_input({"type": "http.request", "body": chunk, "more_body": more})
    response = await communicator.get_response(timeout=TIMEOUT)
    await communicator.wait(TIMEOUT)
    headers = {name.decode().lower(): value.decode() for name, value in response["headers"]}
    return response["status"], headers, response["body"]


def _point_body(simulation_id: int) -> bytes:
    return json.dumps({"simulation_id": simulation_id, "step": 1, "loss_value": 0.5}).encode()


def _length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode())


# name -> (headers for (token, body), body for a simulation id, the long way's status)
ODD_REQUESTS = {
    "chunked, no length": (
        lambda token, body: [(b"transfer-encoding", b"chunked")],
        _point_body,
        400,
    ),
    "a zero length with a body": (
        lambda token, body: [(b"content-length", b"0")],
        _point_body,
        400,
    ),
    "a length over the limit, a small body": (
        lambda token, body: [(b"content-length", b"100000")],
        _point_body,
        413,
    ),
    "a bad token first, a good one second": (
        lambda token, body: [_length(body), (b"authorization", b"Token " + b"0" * 40)],
        _point_body,
        401,
    ),
    "an unknown host first": (
        lambda token, body: [_length(body), (b"host", b"attacker.example")],
        _point_body,
        400,
    ),
    "a second content type": (
        lambda token, body: [_length(body), (b"content-type", b"text/plain")],
        _point_body,
        415,
    ),
    "nested too deeply for Python's parser": (
        lambda token, body: [_length(body)],
        lambda simulation_id: b"[" * 100_000 + b"]" * 100_000,
        400,
    ),
}


@pytest.mark.parametrize("case", list(ODD_REQUESTS))
async def test_odd_requests_are_answered_as_django_answers_them_and_write_nothing(
    case, user, token, settings
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000_000
    extra_headers, make_body, expected = ODD_REQUESTS[case]
    answers = {}
    for shortcut in (False, True):
        settings.SIMSCHED_INGEST_SHORTCUT = shortcut
        if case.startswith("a length over"):
            settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64
        simulation = await db(make_simulation, name=f"odd-{shortcut}", owner=user)
        body = make_body(simulation.pk)
        headers = [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Token {token}".encode()),
            *extra_headers(token, body),
        ]
        status, answer_headers, content = await post_raw(headers, [body[:10], body[10:]])
        stored = await db(ConvergencePoint.objects.filter(simulation=simulation).count)
        answers[shortcut] = (status, *comparable(answer_headers, content), stored)
    assert answers[False][0] == expected
    assert answers[False][-1] == 0
    assert answers[True] == answers[False]


async def test_a_forwarded_host_is_judged_by_django_when_it_is_trusted(user, token, settings):
    settings.USE_X_FORWARDED_HOST = True
    simulation = await db(make_simulation, name="xfh", owner=user)
    body = {"simulation_id": simulation.pk, "step": 0, "loss_value": 0.5}

    status, _, _ = await post(body, token, headers=[(b"x-forwarded-host", b"attacker.example")])

    assert status == 400
    assert not await db(ConvergencePoint.objects.filter(simulation=simulation).exists)


async def test_a_repeated_proxy_header_counts_by_its_first_value_as_in_django(
    user, token, settings
):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    app = get_http_application()
    simulation = await db(make_simulation, name="proto", owner=user)
    forwarded = [(b"x-forwarded-proto", b"http"), (b"x-forwarded-proto", b"https")]

    status, _, _ = await post(
        {"simulation_id": simulation.pk, "step": 0, "loss_value": 0.5}, token, forwarded, app=app
    )

    assert status == 301
    assert not await db(ConvergencePoint.objects.filter(simulation=simulation).exists)


async def test_a_crash_inside_the_write_is_django_s_json_500_not_a_dropped_request(
    user, token, settings, monkeypatch, caplog
):
    simulation = await db(make_simulation, name="crash", owner=user)
    body = {"simulation_id": simulation.pk, "step": 0, "loss_value": 0.5}

    def crash(**kwargs):
        raise RuntimeError("a bug")

    answers = {}
    for shortcut in (False, True):
        settings.SIMSCHED_INGEST_SHORTCUT = shortcut
        monkeypatch.setattr("convergence.services.point_add", crash)
        status, headers, content = await post(body, token)
        answers[shortcut] = (status, *comparable(headers, content))
    assert answers[False][0] == 500
    assert answers[True] == answers[False]
    crashes = [r for r in caplog.records if r.name == "django.request" and r.exc_info]
    assert len(crashes) == 2  # logged with the traceback, both ways


async def test_json_log_lines_of_a_refused_point_name_request_user_and_simulation(
    user, token, settings
):
    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(json.loads(JSONFormatter().format(record)))  # while the request is bound

    handler = Collect()
    logging.getLogger("django.request").addHandler(handler)
    try:
        simulation = await db(make_simulation, name="logged", owner=user)
        point = {"simulation_id": simulation.pk, "step": 0, "loss_value": 0.5}
        for shortcut in (False, True):
            settings.SIMSCHED_INGEST_SHORTCUT = shortcut
            await post(point, token)
            await post({**point, "loss_value": 0.25}, token, [(b"x-request-id", b"conflict-1")])
    finally:
        logging.getLogger("django.request").removeHandler(handler)

    fields = [
        (line["request_id"], line["user"], line["simulation_id"], line["status_code"])
        for line in lines
    ]
    assert fields == [("conflict-1", "engineer", simulation.pk, 409)] * 2  # the long way, then ours
