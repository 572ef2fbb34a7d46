"""POST /convergence/{id}/points: up to 10,000 points per request, idempotent by step."""

import json
import threading
from datetime import datetime

import pytest
from django.conf import settings
from django.db import connection

from convergence.models import ConvergencePoint
from tests.convergence.conftest import error_of
from tests.factories import token_client

MISSING_ID = 987_654


def batch(steps, loss=lambda step: 1.0 / (step + 1)) -> dict:
    return {"points": [{"step": step, "loss_value": loss(step)} for step in steps]}


def send(api, simulation_id: int, body: dict):
    return api.post(f"/convergence/{simulation_id}/points", body, format="json")


def stored(simulation) -> dict[int, float]:
    points = ConvergencePoint.objects.filter(simulation=simulation)
    return dict(points.values_list("step", "loss_value"))


def test_a_full_batch_of_10000_points_is_stored(api, simulation):
    response = send(api, simulation.pk, batch(range(10_000)))

    assert response.status_code == 200, response.content
    assert response.json() == {"stored": 10_000, "duplicates": 0}
    points = stored(simulation)
    assert sorted(points) == list(range(10_000))
    assert points[9_999] == 1.0 / 10_000


def test_resending_a_batch_stores_nothing_twice(api, simulation):
    send(api, simulation.pk, batch(range(100)))

    response = send(api, simulation.pk, batch(range(100)))

    assert response.status_code == 200, response.content
    assert response.json() == {"stored": 0, "duplicates": 100}
    assert ConvergencePoint.objects.filter(simulation=simulation).count() == 100


def test_an_overlapping_batch_counts_its_duplicates(api, simulation):
    send(api, simulation.pk, batch(range(0, 100)))

    response = send(api, simulation.pk, batch(range(60, 150)))

    assert response.status_code == 200, response.content
    assert response.json() == {"stored": 50, "duplicates": 40}
    assert sorted(stored(simulation)) == list(range(150))


def test_a_step_repeated_with_the_same_loss_inside_a_batch_is_stored_once(api, simulation):
    """...and counted as a duplicate: every value sent is either stored or a duplicate."""
    body = {
        "points": [
            {"step": 1, "loss_value": 0.5},
            {"step": 1, "loss_value": 0.5},
            {"step": 1, "values": {"loss": 0.5, "lr": 0.1}},
        ]
    }

    response = send(api, simulation.pk, body)

    assert response.status_code == 200, response.content
    assert response.json() == {"stored": 2, "duplicates": 2}
    assert sorted(
        ConvergencePoint.objects.filter(simulation=simulation).values_list(
            "series__metric", "step", "loss_value"
        )
    ) == [("loss", 1, 0.5), ("lr", 1, 0.1)]


def chart_count(api, simulation) -> int:
    """Points the chart counts (from the rollup when the run is large)."""
    return api.get(f"/convergence/{simulation.pk}/graph").json()["raw_points"]


def test_resent_and_overlapping_batches_are_counted_once_by_the_chart(api, simulation):
    send(api, simulation.pk, batch(range(10_000)))
    send(api, simulation.pk, batch(range(10_000)))
    send(api, simulation.pk, batch(range(9_000, 12_000)))

    assert chart_count(api, simulation) == 12_000


def test_a_rejected_batch_leaves_the_chart_unchanged(api, simulation):
    send(api, simulation.pk, batch(range(5_000)))

    conflicting = batch(range(4_000, 9_000), loss=lambda step: 7.0)
    assert send(api, simulation.pk, conflicting).status_code == 409

    assert chart_count(api, simulation) == 5_000
    body = api.get(f"/convergence/{simulation.pk}/graph").json()
    assert max(p["step"] for p in body["points"]) == 4_999
    assert all(p["loss"] != 7.0 for p in body["points"])


@pytest.mark.postgres
def test_concurrent_overlapping_batches_store_each_step_once(user, simulation):
    results: list[dict] = []
    senders = 4

    def send_overlapping(offset: int):
        client = token_client(user)
        try:
            response = send(client, simulation.pk, batch(range(offset, offset + 3_000)))
            results.append(response.json() | {"status": response.status_code})
        finally:
            connection.close()

    threads = [threading.Thread(target=send_overlapping, args=(i * 1_000,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [r["status"] for r in results] == [200] * senders
    assert sum(r["stored"] for r in results) == 6_000
    assert sum(r["stored"] + r["duplicates"] for r in results) == senders * 3_000
    assert sorted(stored(simulation)) == list(range(6_000))
    assert chart_count(token_client(user), simulation) == 6_000


def test_a_conflicting_step_rejects_the_whole_batch(api, simulation):
    send(api, simulation.pk, {"points": [{"step": 5, "loss_value": 0.5}]})

    body = batch(range(0, 20), loss=lambda step: 0.9 if step == 5 else 2.0)
    response = send(api, simulation.pk, body)

    assert response.status_code == 409, response.content
    error = error_of(response)
    assert error["code"] == "step_conflict"
    assert error["details"]["conflicts"] == [
        {"metric": "loss", "step": 5, "stored_loss": 0.5, "sent_loss": 0.9}
    ]
    assert stored(simulation) == {5: 0.5}


def test_a_conflict_lists_every_conflicting_step(api, simulation):
    send(api, simulation.pk, batch([2, 4, 6]))

    body = batch(range(8), loss=lambda step: 100.0 + step)
    response = send(api, simulation.pk, body)

    assert response.status_code == 409
    conflicts = error_of(response)["details"]["conflicts"]
    assert sorted(c["step"] for c in conflicts) == [2, 4, 6]
    assert sorted(stored(simulation)) == [2, 4, 6]


def test_a_step_twice_in_one_batch_with_different_losses_is_rejected(api, simulation):
    body = {
        "points": [
            {"step": 1, "loss_value": 0.5},
            {"step": 2, "loss_value": 0.4},
            {"step": 1, "loss_value": 0.6},
        ]
    }

    response = send(api, simulation.pk, body)

    assert response.status_code == 400, response.content
    fields = error_of(response)["fields"]
    assert set(fields["points"]) == {"2"}
    assert "step" in fields["points"]["2"]
    assert stored(simulation) == {}


def test_more_than_10000_points_are_rejected(api, simulation):
    response = send(api, simulation.pk, batch(range(10_001)))

    assert response.status_code == 400, response.content
    error = error_of(response)
    assert "points" in error["fields"]
    assert "10000" in json.dumps(error).replace(",", "")
    assert stored(simulation) == {}


def test_a_body_over_the_request_limit_is_413(api, simulation):
    assert settings.MAX_REQUEST_BYTES == 4 * 1024 * 1024
    body = batch(range(10))
    body["padding"] = "x" * settings.MAX_REQUEST_BYTES

    response = send(api, simulation.pk, body)

    assert response.status_code == 413, response.content[:300]
    assert error_of(response)["code"] == "payload_too_large"
    assert stored(simulation) == {}


def test_a_body_just_under_the_request_limit_is_accepted(api, simulation):
    body = batch(range(10))
    overhead = len(json.dumps({**body, "padding": ""}).encode())
    body["padding"] = "x" * (settings.MAX_REQUEST_BYTES - overhead)
    assert len(json.dumps(body).encode()) == settings.MAX_REQUEST_BYTES

    response = send(api, simulation.pk, body)

    assert response.status_code == 200, response.content[:300]
    assert response.json() == {"stored": 10, "duplicates": 0}


def test_bad_points_are_reported_by_their_index(api, simulation):
    body = batch(range(10))
    body["points"][2]["loss_value"] = "NaN"
    body["points"][4]["step"] = -1
    body["points"][7] = {"step": "seven", "loss_value": None}
    body["points"][8]["timestamp"] = "not a date"

    response = send(api, simulation.pk, body)

    assert response.status_code == 400, response.content
    errors = error_of(response)["fields"]["points"]
    assert set(errors) == {"2", "4", "7", "8"}
    assert set(errors["2"]) == {"loss_value"}
    assert set(errors["4"]) == {"step"}
    assert set(errors["7"]) == {"step", "loss_value"}
    assert set(errors["8"]) == {"timestamp"}
    assert stored(simulation) == {}


def test_an_error_answer_names_at_most_20_bad_series_of_a_point(api, simulation):
    """A `values` object of 5,000 bad names gets an answer no larger than its request."""
    values = {f"bad name {i}": 1.0 for i in range(5_000)}
    body = {"points": [{"step": 0, "values": values}]}

    response = send(api, simulation.pk, body)

    assert response.status_code == 400, response.content
    (named,) = error_of(response)["fields"]["points"]["0"]["values"]
    assert len(named) == 20
    assert len(response.content) < len(json.dumps(body)) / 10
    assert stored(simulation) == {}


def test_non_finite_bare_literals_in_a_batch_are_rejected(api, simulation):
    raw = '{"points": [{"step": 0, "loss_value": 1.0}, {"step": 1, "loss_value": Infinity}]}'

    response = api.post(
        f"/convergence/{simulation.pk}/points", data=raw, content_type="application/json"
    )

    assert response.status_code == 400, response.content
    assert error_of(response)["code"] in {"parse_error", "invalid"}
    assert stored(simulation) == {}


def test_a_batch_without_points_is_rejected(api, simulation):
    for body in ({}, {"points": []}, {"points": "many"}):
        response = send(api, simulation.pk, body)
        assert response.status_code == 400, (body, response.content)
        assert "points" in error_of(response)["fields"]


def test_batch_timestamps_are_stored(api, simulation):
    body = {"points": [{"step": 0, "loss_value": 1.0, "timestamp": "2026-02-03T04:05:06+00:00"}]}

    assert send(api, simulation.pk, body).status_code == 200

    point = ConvergencePoint.objects.get(simulation=simulation)
    assert point.timestamp.isoformat() == "2026-02-03T04:05:06+00:00"


def test_a_batch_for_an_unknown_simulation_is_404(api):
    response = send(api, MISSING_ID, batch(range(3)))

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    assert not ConvergencePoint.objects.exists()


def test_the_batch_limits_are_in_the_openapi_schema(api):
    response = api.get("/schema", {"format": "json"})

    assert response.status_code == 200
    schema = json.loads(response.content)
    paths = schema["paths"]
    path = "/convergence/{simulation_id}/points"
    operation = (paths.get(path) or paths[f"{path}/"])["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body_schema = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert body_schema["properties"]["points"]["maxItems"] == 10_000
    assert body_schema["properties"]["points"]["minItems"] == 1
    assert {"400", "409", "413"} <= set(operation["responses"])
    assert "4 MiB" in operation["description"]


def test_batch_timestamps_keep_their_microseconds_and_offset(api, simulation):
    sent = "2026-02-03T04:05:06.123457+02:00"
    body = {"points": [{"step": 0, "loss_value": 1.0, "timestamp": sent}]}
    assert send(api, simulation.pk, body).status_code == 200
    point = ConvergencePoint.objects.get(simulation=simulation, step=0)
    assert point.timestamp == datetime.fromisoformat(sent)
    assert point.timestamp.microsecond == 123457
