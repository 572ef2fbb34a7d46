"""`manage.py compact`: the raw points of runs that ended long ago go, their rollups stay, and
graph, compare and /metrics still answer the run's whole shape (marked `rollups_only`), while
the raw data export says 410 Gone."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from convergence.housekeeping import compact_points, parse_cutoff
from convergence.models import ConvergencePoint, ConvergenceRollup, ConvergenceSeries
from simulations.models import Simulation
from tests.convergence.conftest import store_points
from tests.factories import make_simulation
from tests.helpers import assert_error

RUN = 5_000


def losses(n: int) -> dict[int, float]:
    values = {step: 10.0 / (step + 1) for step in range(n)}
    if n > 1234:
        values[1234] = 99.0  # a spike the rollups must keep
    return values


def end(simulation, *, days_ago: float, status=Simulation.Status.FINISHED) -> None:
    Simulation.objects.filter(pk=simulation.pk).update(
        status=status, finished_at=timezone.now() - timedelta(days=days_ago)
    )


def compact(*args) -> str:
    out = StringIO()
    call_command("compact", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def old_run(user):
    simulation = make_simulation(name="old-run", owner=user)
    store_points(simulation.pk, losses(RUN))
    end(simulation, days_ago=120)
    return simulation


def test_compact_drops_old_final_runs_points_and_keeps_rollups(api, user, old_run):
    recent = make_simulation(name="recent", owner=user)
    store_points(recent.pk, losses(100))
    end(recent, days_ago=10)
    running = make_simulation(name="running", owner=user)
    store_points(running.pk, losses(100))
    rollups_before = ConvergenceRollup.objects.filter(simulation=old_run).count()

    dry = compact("--older-than", "90d", "--dry-run")

    assert f"would delete {RUN} points" in dry
    assert ConvergencePoint.objects.filter(simulation=old_run).count() == RUN

    out = compact("--older-than", "90d")

    assert f"1 simulations, 1 series: deleted {RUN} points" in out
    assert ConvergencePoint.objects.filter(simulation=old_run).count() == 0
    assert ConvergenceRollup.objects.filter(simulation=old_run).count() == rollups_before
    assert ConvergenceSeries.objects.get(simulation=old_run).compacted_at is not None
    assert ConvergencePoint.objects.filter(simulation=recent).count() == 100
    assert ConvergencePoint.objects.filter(simulation=running).count() == 100
    assert "deleted 0 points" in compact("--older-than", "90d")  # idempotent


def test_a_compacted_run_still_charts_its_whole_shape(api, old_run):
    before = api.get(f"/convergence/{old_run.pk}/graph", {"max_points": 200}).json()
    assert before["rollups_only"] is False
    compact("--older-than", "90d")

    body = api.get(f"/convergence/{old_run.pk}/graph", {"max_points": 200}).json()

    assert body["rollups_only"] is True
    assert body["downsampled"] is True
    assert (body["from_step"], body["to_step"]) == (0, RUN - 1)
    assert body["raw_points"] == RUN
    assert 0 < body["returned_points"] <= 200
    steps = {p["step"]: p["loss"] for p in body["points"]}
    assert steps[1234] == 99.0 and steps[0] == 10.0
    assert steps == {p["step"]: p["loss"] for p in before["points"]}


def test_a_small_window_of_a_compacted_run_comes_from_rollups(api, old_run):
    compact("--older-than", "90d")

    body = api.get(f"/convergence/{old_run.pk}/graph", {"from_step": 1230, "to_step": 1240}).json()

    assert body["rollups_only"] is True
    assert (body["from_step"], body["to_step"]) == (1230, 1240)
    assert body["points"], body
    assert all(1230 <= p["step"] <= 1240 for p in body["points"])
    assert {"step": 1234, "loss": 99.0} in [
        {"step": p["step"], "loss": p["loss"]} for p in body["points"]
    ]


def test_compare_and_metrics_of_a_compacted_run(api, user, old_run):
    fresh = make_simulation(name="fresh", owner=user)
    store_points(fresh.pk, losses(50))
    compact("--older-than", "90d")

    runs = api.get(
        "/convergence/compare", {"simulations": f"{old_run.pk},{fresh.pk}", "max_points": 64}
    ).json()["simulations"]
    metrics = api.get(f"/convergence/{old_run.pk}/metrics").json()["metrics"]

    assert [r["rollups_only"] for r in runs] == [True, False]
    assert runs[0]["raw_points"] == RUN and runs[0]["returned_points"] <= 64
    assert metrics[0]["points"] == RUN  # what the series held: counted from the rollups
    assert (metrics[0]["first_step"], metrics[0]["last_step"]) == (0, RUN - 1)
    assert metrics[0]["max"] == 99.0


@pytest.mark.parametrize("query", [{"format": "csv"}, {"format": "csv", "metric": "loss"}, {}])
def test_raw_data_of_a_compacted_run_is_410_gone(api, old_run, query):
    compact("--older-than", "90d")

    response = api.get(f"/convergence/{old_run.pk}/data", query)

    error = assert_error(response, 410, "compacted")
    assert "compaction" in error["message"]
    assert response["Content-Type"].startswith("application/json")


def test_failed_and_cancelled_runs_are_compacted_too(user):
    failed = make_simulation(name="failed", owner=user)
    cancelled = make_simulation(name="cancelled", owner=user)
    for simulation, status in ((failed, "failed"), (cancelled, "cancelled")):
        store_points(simulation.pk, losses(40))
        end(simulation, days_ago=5, status=status)

    result = compact_points(older_than=timezone.now() - timedelta(days=1))

    assert (result.simulations, result.series, result.points_deleted) == (2, 2, 80)


def test_deleting_a_compacted_simulation_still_removes_everything(old_run):
    compact("--older-than", "90d")
    old_run.delete()
    assert not ConvergenceRollup.objects.filter(simulation_id=old_run.pk).exists()
    assert not ConvergenceSeries.objects.filter(simulation_id=old_run.pk).exists()


def test_cutoff_forms():
    now = timezone.now()
    assert parse_cutoff("90d", now) == now - timedelta(days=90)
    assert parse_cutoff("12h", now) == now - timedelta(hours=12)
    assert parse_cutoff("2026-01-01").isoformat() == "2026-01-01T00:00:00+00:00"


@pytest.mark.parametrize("bad", ["", "90", "d90", "-3d", "yesterday", "2026-13-01"])
def test_a_bad_cutoff_is_a_command_error_and_deletes_nothing(old_run, bad):
    with pytest.raises(CommandError):
        compact("--older-than", bad)
    assert ConvergencePoint.objects.filter(simulation=old_run).count() == RUN


@pytest.mark.parametrize(
    "path, body",
    [
        ("/convergence/data", {"step": 3, "loss_value": 99.0}),  # a conflicting value
        ("/convergence/data", {"step": 3, "loss_value": 10.0 / 4}),  # the stored one again
        ("/convergence/data", {"loss_value": 0.5}),  # the next step
        ("/convergence/data", {"step": RUN + 7, "loss_value": 0.5}),  # a new step
        ("/convergence/{id}/add-bare-sql", {"step": 3, "loss_value": 99.0}),
        ("/convergence/{id}/points", {"points": [{"step": 3, "loss_value": 10.0 / 4}]}),
        (
            "/convergence/{id}/points",  # one compacted series among others: nothing at all
            {"points": [{"step": 3, "values": {"loss": 10.0 / 4, "lr": 0.1}}]},
        ),
    ],
)
def test_a_compacted_series_refuses_new_points_and_stores_nothing(api, old_run, path, body):
    """Its raw points are gone, so nothing could tell a resent point (a duplicate) or a changed
    one (a conflict) from a new one: storing it would count it twice in the rollups."""
    compact("--older-than", "90d")
    rollups = list(ConvergenceRollup.objects.filter(simulation=old_run).values_list())
    if path == "/convergence/data":
        body = {"simulation_id": old_run.pk, **body}

    response = api.post(path.format(id=old_run.pk), body, format="json")

    assert_error(response, 409, "series_compacted")
    assert not ConvergencePoint.objects.filter(simulation=old_run).exists()
    assert not ConvergenceSeries.objects.filter(simulation=old_run, metric="lr").exists()
    assert list(ConvergenceRollup.objects.filter(simulation=old_run).values_list()) == rollups
