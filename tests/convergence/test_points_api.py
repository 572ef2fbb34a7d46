"""One point at a time: POST /convergence/data and /convergence/{id}/add-bare-sql, and the
reads that page through a run: /convergence/{id}/stream and /convergence/{id}/data."""

import csv
import io
import threading
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.utils import timezone

from convergence.models import ConvergencePoint
from tests.convergence.conftest import error_of, store_points
from tests.factories import token_client

MISSING_ID = 987_654


def stored(simulation) -> list[tuple[int, float]]:
    points = ConvergencePoint.objects.filter(simulation=simulation).order_by("step")
    return list(points.values_list("step", "loss_value"))


def add_point(api, simulation_id: int, **fields):
    return api.post("/convergence/data", {"simulation_id": simulation_id, **fields}, format="json")


def add_point_bare(api, simulation_id: int, **fields):
    return api.post(f"/convergence/{simulation_id}/add-bare-sql", fields, format="json")


def post_raw(api, url: str, body: str):
    return api.post(url, data=body, content_type="application/json")


# Both single-point endpoints follow the same rules: each test below runs against both.
WRITERS = {"orm": add_point, "bare_sql": add_point_bare}
RAW_URLS = {"orm": "/convergence/data", "bare_sql": "/convergence/{id}/add-bare-sql"}


@pytest.fixture(params=sorted(WRITERS))
def writer(request):
    return request.param


def raw_body(writer: str, simulation_id: int, loss_literal: str) -> tuple[str, str]:
    url = RAW_URLS[writer].format(id=simulation_id)
    sim_field = f'"simulation_id": {simulation_id}, ' if writer == "orm" else ""
    return url, f'{{{sim_field}"step": 0, "loss_value": {loss_literal}}}'


# --- Writing one point ----------------------------------------------------------------------


def test_a_new_point_is_created_and_returned(api, simulation, writer):
    response = WRITERS[writer](api, simulation.pk, step=3, loss_value=0.75)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["simulation_id"] == simulation.pk
    assert body["step"] == 3
    assert body["loss_value"] == 0.75
    assert body["id"] == ConvergencePoint.objects.get(simulation=simulation, step=3).pk
    assert stored(simulation) == [(3, 0.75)]


def test_omitted_steps_are_assigned_in_order_from_zero(api, simulation, writer):
    steps = [WRITERS[writer](api, simulation.pk, loss_value=1.0 / (i + 1)) for i in range(4)]

    assert [r.status_code for r in steps] == [201] * 4
    assert [r.json()["step"] for r in steps] == [0, 1, 2, 3]
    assert [step for step, _ in stored(simulation)] == [0, 1, 2, 3]


def test_an_omitted_step_follows_the_highest_stored_step(api, simulation, writer):
    WRITERS[writer](api, simulation.pk, step=41, loss_value=2.0)

    response = WRITERS[writer](api, simulation.pk, loss_value=1.0)

    assert response.status_code == 201
    assert response.json()["step"] == 42


def test_resending_the_same_step_and_loss_returns_200_and_stores_it_once(api, simulation, writer):
    first = WRITERS[writer](api, simulation.pk, step=5, loss_value=0.5)
    again = WRITERS[writer](api, simulation.pk, step=5, loss_value=0.5)

    assert first.status_code == 201
    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["loss_value"] == 0.5
    assert stored(simulation) == [(5, 0.5)]


def test_the_same_step_with_another_loss_is_a_conflict_and_changes_nothing(api, simulation, writer):
    WRITERS[writer](api, simulation.pk, step=5, loss_value=0.5)

    response = WRITERS[writer](api, simulation.pk, step=5, loss_value=0.9)

    assert response.status_code == 409, response.content
    error = error_of(response)
    assert error["code"] == "step_conflict"
    assert "5" in error["message"] or "5" in str(error["details"])
    conflict = error["details"]
    assert conflict == {"metric": "loss", "step": 5, "stored_loss": 0.5, "sent_loss": 0.9}
    assert stored(simulation) == [(5, 0.5)]


@pytest.mark.parametrize("loss", ["NaN", "Infinity", "-Infinity", "nan", "inf"])
def test_non_finite_losses_as_strings_are_rejected_and_nothing_is_stored(
    api, simulation, writer, loss
):
    response = WRITERS[writer](api, simulation.pk, step=0, loss_value=loss)

    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["code"] == "invalid"
    assert "loss_value" in error["fields"]
    assert stored(simulation) == []


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_bare_json_literals_are_rejected_and_nothing_is_stored(
    api, simulation, writer, literal
):
    url, body = raw_body(writer, simulation.pk, literal)

    response = post_raw(api, url, body)

    assert response.status_code == 400, response.content
    assert error_of(response)["code"] in {"parse_error", "invalid"}
    assert stored(simulation) == []


def test_a_finite_raw_body_is_accepted(api, simulation, writer):
    url, body = raw_body(writer, simulation.pk, "1.5e-3")

    response = post_raw(api, url, body)

    assert response.status_code == 201, response.content
    assert stored(simulation) == [(0, 0.0015)]


def test_a_point_for_an_unknown_simulation_is_404(api, writer):
    response = WRITERS[writer](api, MISSING_ID, step=0, loss_value=1.0)

    assert response.status_code == 404, response.content
    assert error_of(response)["code"] == "not_found"
    assert not ConvergencePoint.objects.exists()


def test_a_point_without_a_step_for_an_unknown_simulation_is_404(api, writer):
    response = WRITERS[writer](api, MISSING_ID, loss_value=1.0)

    assert response.status_code == 404, response.content
    assert error_of(response)["code"] == "not_found"


@pytest.mark.parametrize("step", [-1, -100])
def test_negative_steps_are_rejected(api, simulation, writer, step):
    response = WRITERS[writer](api, simulation.pk, step=step, loss_value=1.0)

    assert response.status_code == 400, response.content
    assert "step" in error_of(response)["fields"]
    assert stored(simulation) == []


def test_a_missing_loss_is_rejected(api, simulation, writer):
    response = WRITERS[writer](api, simulation.pk, step=0)

    assert response.status_code == 400
    assert "loss_value" in error_of(response)["fields"]


def test_a_given_timestamp_is_stored(api, simulation, writer):
    response = WRITERS[writer](
        api, simulation.pk, step=0, loss_value=1.0, timestamp="2026-03-04T05:06:07Z"
    )

    assert response.status_code == 201, response.content
    expected = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert datetime.fromisoformat(response.json()["timestamp"]) == expected
    assert ConvergencePoint.objects.get(simulation=simulation).timestamp == expected


@pytest.mark.parametrize("stamp", ["1999-12-31T23:59:59Z", "2999-01-01T00:00:00Z", "yesterday"])
def test_a_timestamp_out_of_range_or_unreadable_is_rejected(api, simulation, writer, stamp):
    response = WRITERS[writer](api, simulation.pk, step=0, loss_value=1.0, timestamp=stamp)

    assert response.status_code == 400, response.content
    assert "timestamp" in error_of(response)["fields"]
    assert stored(simulation) == []


def test_an_omitted_timestamp_is_the_server_time(api, simulation, writer):
    before = timezone.now()
    response = WRITERS[writer](api, simulation.pk, step=0, loss_value=1.0)
    after = timezone.now()

    assert response.status_code == 201
    stamp = ConvergencePoint.objects.get(simulation=simulation).timestamp
    assert before <= stamp <= after
    assert datetime.fromisoformat(response.json()["timestamp"]) == stamp


def test_unauthenticated_writes_are_401(anon_api, simulation):
    response = add_point(anon_api, simulation.pk, step=0, loss_value=1.0)

    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"
    assert stored(simulation) == []


@pytest.mark.postgres
def test_concurrent_posts_without_steps_get_every_step_exactly_once(user, simulation, writer):
    threads, per_thread = 4, 8
    failures: list[str] = []

    def post_many():
        client = token_client(user)
        try:
            for i in range(per_thread):
                response = WRITERS[writer](client, simulation.pk, loss_value=1.0 + i)
                if response.status_code != 201:
                    failures.append(f"{response.status_code} {response.content!r}")
        finally:
            connection.close()

    workers = [threading.Thread(target=post_many) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert failures == []
    assert [step for step, _ in stored(simulation)] == list(range(threads * per_thread))


# --- Reading: stream ------------------------------------------------------------------------


def test_stream_returns_only_points_after_since_step(api, simulation):
    store_points(simulation.pk, {step: step / 10 for step in range(10)})

    response = api.get(f"/convergence/{simulation.pk}/stream", {"since_step": 6})

    assert response.status_code == 200
    body = response.json()
    assert [(p["step"], p["loss"]) for p in body["points"]] == [(7, 0.7), (8, 0.8), (9, 0.9)]
    assert all("timestamp" in p for p in body["points"])
    assert body["simulation_id"] == simulation.pk
    assert body["status"] == "pending"
    assert body["is_complete"] is False
    assert body["since_step"] == 6
    assert body["last_step"] == 9
    assert body["has_more"] is False


def test_stream_without_since_step_starts_at_the_first_point(api, simulation):
    store_points(simulation.pk, {0: 1.0, 1: 0.5})

    body = api.get(f"/convergence/{simulation.pk}/stream").json()

    assert [p["step"] for p in body["points"]] == [0, 1]


def test_stream_limit_says_there_is_more(api, simulation):
    store_points(simulation.pk, {step: 1.0 for step in range(10)})

    body = api.get(f"/convergence/{simulation.pk}/stream", {"since_step": 2, "limit": 3}).json()

    assert [p["step"] for p in body["points"]] == [3, 4, 5]
    assert body["has_more"] is True
    assert body["last_step"] == 5
    rest = api.get(f"/convergence/{simulation.pk}/stream", {"since_step": 5, "limit": 10}).json()
    assert [p["step"] for p in rest["points"]] == [6, 7, 8, 9]
    assert rest["has_more"] is False


def test_stream_past_the_end_is_empty_and_keeps_since_step(api, simulation):
    store_points(simulation.pk, {0: 1.0})

    body = api.get(f"/convergence/{simulation.pk}/stream", {"since_step": 0}).json()

    assert body["points"] == []
    assert body["last_step"] == 0
    assert body["has_more"] is False


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 10_001}, {"since_step": "x"}])
def test_stream_rejects_bad_parameters(api, simulation, query):
    response = api.get(f"/convergence/{simulation.pk}/stream", query)

    assert response.status_code == 400
    assert set(error_of(response)["fields"]) <= {"limit", "since_step"}


def test_stream_of_an_unknown_simulation_is_404(api):
    response = api.get(f"/convergence/{MISSING_ID}/stream", {"since_step": 0})

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


# --- Reading: data pages and CSV ------------------------------------------------------------


def test_data_pages_follow_next_to_the_end_with_every_point_once_in_order(api, simulation):
    steps = [0, 3, 4, 10, 11, 12, 50, 51, 99, 100, 101, 250, 1000, 1001, 5000, 70_000, 70_001]
    store_points(simulation.pk, {step: step * 0.5 for step in reversed(steps)})

    url, seen, pages = f"/convergence/{simulation.pk}/data?limit=4", [], 0
    while url:
        response = api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        assert len(body["results"]) <= 4
        seen += [(p["step"], p["loss_value"]) for p in body["results"]]
        url, pages = body["next"], pages + 1

    assert seen == [(step, step * 0.5) for step in steps]
    assert pages == 5


def test_data_results_carry_the_point_fields(api, simulation):
    store_points(simulation.pk, {7: 0.25})

    body = api.get(f"/convergence/{simulation.pk}/data").json()

    [point] = body["results"]
    assert point["step"] == 7
    assert point["loss_value"] == 0.25
    assert point["simulation_id"] == simulation.pk
    assert datetime.fromisoformat(point["timestamp"]).tzinfo is not None
    assert body["next"] is None


def test_data_only_lists_the_simulations_own_points(api, simulation, user):
    from tests.factories import make_simulation

    other = make_simulation(owner=user)
    store_points(simulation.pk, {0: 1.0, 1: 2.0})
    store_points(other.pk, {0: 9.0, 5: 9.0})

    body = api.get(f"/convergence/{simulation.pk}/data").json()

    assert [(p["step"], p["loss_value"]) for p in body["results"]] == [(0, 1.0), (1, 2.0)]


def test_data_of_an_empty_simulation_is_an_empty_page(api, simulation):
    response = api.get(f"/convergence/{simulation.pk}/data")

    assert response.status_code == 200
    assert response.json()["results"] == []


def streamed_text(response) -> str:
    """The body of a streaming response (the server path sends it in chunks as it is read)."""
    assert response.streaming
    return b"".join(response.streaming_content).decode()


def test_data_as_csv_of_one_metric_streams_that_series(api, simulation):
    losses = {step: 1.0 / (step + 3) for step in range(2500)}
    store_points(simulation.pk, losses)

    response = api.get(f"/convergence/{simulation.pk}/data", {"format": "csv", "metric": "loss"})

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert f"simulation-{simulation.pk}.csv" in response["Content-Disposition"]
    text = streamed_text(response)
    header, *rows = list(csv.reader(io.StringIO(text)))
    assert header == ["step", "timestamp", "loss_value"]
    assert [int(row[0]) for row in rows] == list(range(2500))
    assert all(float(row[2]) == losses[int(row[0])] for row in rows)
    assert datetime.fromisoformat(rows[0][1]).tzinfo is not None


def test_data_as_csv_of_an_empty_simulation_is_just_the_header(api, simulation):
    response = api.get(f"/convergence/{simulation.pk}/data", {"format": "csv"})

    assert response.status_code == 200
    assert streamed_text(response).splitlines() == ["step,metric,value,timestamp"]


def test_data_of_an_unknown_simulation_is_404(api):
    response = api.get(f"/convergence/{MISSING_ID}/data")

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_data_as_csv_of_an_unknown_simulation_is_404(api):
    response = api.get(f"/convergence/{MISSING_ID}/data", {"format": "csv"})

    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert error_of(response)["code"] == "not_found"
