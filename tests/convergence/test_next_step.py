"""The server-chosen step: every write keeps each series' `next_step`, a point sent without a
step takes it, and the migration that added it computed it from what was stored."""

import importlib

import pytest
from django.db import connection

from convergence.models import ConvergencePoint, ConvergenceRollup, ConvergenceSeries
from tests.convergence.conftest import BASE_TIME, store_points

backfill = importlib.import_module("convergence.migrations.0006_series_next_step").BACKFILL


def next_step(simulation, metric="loss") -> int:
    return ConvergenceSeries.objects.get(simulation=simulation, metric=metric).next_step


def post_stepless(api, simulation, **fields):
    body = {"simulation_id": simulation.pk, "loss_value": 0.5, **fields}
    return api.post("/convergence/data", body, format="json")


def test_every_write_moves_next_step_past_its_largest_step(api, simulation):
    store_points(simulation.pk, {3: 1.0, 9: 0.9, 5: 0.8})
    assert next_step(simulation) == 10

    store_points(simulation.pk, {4: 0.7})  # below: it stays
    assert next_step(simulation) == 10

    response = api.post(
        "/convergence/data",
        {"simulation_id": simulation.pk, "step": 40, "loss_value": 0.1, "metric": "lr"},
        format="json",
    )
    assert response.status_code == 201
    assert (next_step(simulation), next_step(simulation, "lr")) == (10, 41)


def test_a_single_point_moves_next_step_only_forward(api, simulation):
    store_points(simulation.pk, {0: 1.0})

    def post(step):
        body = {"simulation_id": simulation.pk, "step": step, "loss_value": 0.5}
        return api.post("/convergence/data", body, format="json").status_code

    assert (post(12), next_step(simulation)) == (201, 13)
    assert (post(2), next_step(simulation)) == (201, 13)  # below: it stays
    assert (post(12), next_step(simulation)) == (200, 13)  # resent
    assert post_stepless(api, simulation).json()["step"] == 13


def test_a_point_without_a_step_takes_next_step_per_series(api, simulation):
    store_points(simulation.pk, {s: 1.0 for s in range(5)})

    steps = [post_stepless(api, simulation).json()["step"] for _ in range(3)]
    lr = post_stepless(api, simulation, metric="lr")

    assert steps == [5, 6, 7]
    assert lr.status_code == 201 and lr.json()["step"] == 0
    assert next_step(simulation) == 8
    assert next_step(simulation, "lr") == 1


def test_a_point_without_a_step_follows_points_loaded_around_the_counter(api, simulation):
    """A bulk load straight into the table (as bench/ingest.py does) leaves next_step behind:
    the next stepless point still goes after the largest stored step, and the counter heals."""
    store_points(simulation.pk, {0: 1.0})
    series = ConvergenceSeries.objects.get(simulation=simulation, metric="loss")
    ConvergencePoint.objects.bulk_create(
        ConvergencePoint(
            simulation=simulation, series=series, step=s, loss_value=0.5, timestamp=BASE_TIME
        )
        for s in (1, 2, 700)
    )
    assert next_step(simulation) == 1

    first, second = post_stepless(api, simulation), post_stepless(api, simulation)

    assert (first.status_code, second.status_code) == (201, 201)
    assert (first.json()["step"], second.json()["step"]) == (701, 702)
    assert next_step(simulation) == 703


def test_a_series_past_the_last_step_is_a_409_that_stores_nothing(api, simulation):
    store_points(simulation.pk, {2**31 - 1: 1.0})

    response = post_stepless(api, simulation)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "steps_exhausted"
    assert ConvergencePoint.objects.filter(simulation=simulation).count() == 1


@pytest.mark.parametrize("compacted", [False, True])
def test_the_migration_computes_next_step_from_points_or_rollups(simulation, compacted):
    store_points(simulation.pk, {s: 1.0 / (s + 1) for s in range(1000)})
    if compacted:  # the raw points are gone: the finest rollup buckets still know the last step
        ConvergencePoint.objects.filter(simulation=simulation).delete()
        assert ConvergenceRollup.objects.filter(simulation=simulation).exists()
    ConvergenceSeries.objects.filter(simulation=simulation).update(next_step=0)

    with connection.cursor() as cursor:
        cursor.execute(backfill)

    assert next_step(simulation) == 1000


def test_the_migration_leaves_a_series_without_points_at_zero(simulation):
    ConvergenceSeries.objects.create(simulation=simulation, metric="lr")

    with connection.cursor() as cursor:
        cursor.execute(backfill)

    assert next_step(simulation, "lr") == 0
