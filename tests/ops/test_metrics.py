"""GET /metrics: the Prometheus text format, behind METRICS_TOKEN or loopback only, with the
queue and the fleet read at scrape time and the write counters moving after a write."""

import pytest
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from simulations.models import Simulation
from tests.factories import make_machine, make_simulation, token_client
from tests.helpers import assert_error

TOKEN = "metrics-secret-token-123"


def scrape(client=None, **headers) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of one scrape."""
    response = (client or APIClient()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def test_metrics_answer_loopback_without_a_token(transactional_db):
    samples = scrape()
    assert ("simsched_simulations", (("status", "pending"),)) in samples


def test_metrics_refuse_a_request_from_elsewhere_without_a_token(transactional_db):
    response = APIClient().get("/metrics", REMOTE_ADDR="203.0.113.7")
    assert_error(response, 403, "permission_denied")


def test_metrics_refuse_a_request_relayed_by_a_local_proxy(transactional_db):
    response = APIClient().get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert_error(response, 403, "permission_denied")


def test_metrics_token_is_required_from_anywhere_once_set(transactional_db, settings):
    settings.METRICS_TOKEN = TOKEN
    assert_error(APIClient().get("/metrics"), 401, "not_authenticated")
    wrong = APIClient().get("/metrics", HTTP_AUTHORIZATION="Bearer not-it")
    assert_error(wrong, 401, "not_authenticated")
    samples = scrape(HTTP_AUTHORIZATION=f"Bearer {TOKEN}", REMOTE_ADDR="203.0.113.7")
    assert ("simsched_machines", (("status", "busy"),)) in samples


def test_metrics_only_answer_get(transactional_db):
    assert_error(APIClient().post("/metrics"), 405, "method_not_allowed")


def test_queue_and_fleet_are_read_at_scrape_time(user):
    small = make_machine(gpu_count=1, memory=64, cpu_cores=16, hourly_cost="2.50")
    make_machine(gpu_count=8, memory=512, cpu_cores=96, hourly_cost="30.00")
    running = make_simulation(owner=user, required_gpus=8)  # takes the big machine
    make_simulation(owner=user, required_gpus=64)  # fits nowhere
    make_simulation(owner=user, required_gpus=8)  # waits for the big one
    running.refresh_from_db()
    assert running.status == Simulation.Status.SCHEDULED

    samples = scrape()

    assert samples[("simsched_simulations", (("status", "scheduled"),))] == 1
    assert samples[("simsched_simulations", (("status", "pending"),))] == 2
    assert samples[("simsched_simulations_waiting", (("reason", "no_machine_fits"),))] == 1
    assert samples[("simsched_simulations_waiting", (("reason", "fitting_machines_busy"),))] == 1
    assert samples[("simsched_machines", (("status", "busy"),))] == 1
    assert samples[("simsched_machines", (("status", "available"),))] == 1
    assert samples[("simsched_machine_utilisation_ratio", ())] == 0.5
    assert samples[("simsched_gpu_utilisation_ratio", ())] == pytest.approx(8 / 9, abs=1e-4)
    assert samples[("simsched_machines_hourly_cost", (("state", "busy"),))] == 30.0
    assert samples[("simsched_machines_hourly_cost", (("state", "idle"),))] == 2.5
    assert samples[("simsched_simulation_wait_seconds_count", ())] == 1
    assert samples[("simsched_simulation_wait_seconds_bucket", (("le", "+Inf"),))] == 1
    assert small.pk  # the idle machine


def test_point_writes_move_the_ingest_counter_and_the_duration_histogram(user):
    simulation = make_simulation(owner=user)
    api = token_client(user)
    single = (("endpoint", "convergence-add-point"),)
    batch = (("endpoint", "convergence-add-points"),)
    before = scrape()

    assert (
        api.post(
            "/convergence/data", {"simulation_id": simulation.pk, "loss_value": 0.5}, format="json"
        ).status_code
        == 201
    )
    points = [{"step": step, "loss_value": 1.0 / (step + 1)} for step in range(1, 6)]
    assert api.post(
        f"/convergence/{simulation.pk}/points", {"points": points}, format="json"
    ).json() == {"stored": 5, "duplicates": 0}
    api.post(f"/convergence/{simulation.pk}/points", {"points": points}, format="json")  # dupes
    nan = api.post(
        "/convergence/data",
        f'{{"simulation_id": {simulation.pk}, "loss_value": NaN}}',
        content_type="application/json",
    )
    assert nan.status_code == 400

    after = scrape()

    def moved(name, labels):
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert moved("simsched_points_ingested_total", single) == 1
    assert moved("simsched_points_ingested_total", batch) == 5
    assert moved("simsched_write_request_duration_seconds_count", single) == 2  # the 400 too
    assert moved("simsched_write_request_duration_seconds_count", batch) == 2


def test_metric_labels_never_carry_ids(user):
    simulation = make_simulation(owner=user)
    token_client(user).post(
        f"/convergence/{simulation.pk}/points",
        {"points": [{"step": 0, "loss_value": 1.0}]},
        format="json",
    )
    for (name, labels), _ in scrape().items():
        if name.startswith("simsched_"):
            for key, value in labels:
                assert str(simulation.pk) != value or key == "le", (name, labels)
                assert key in {"status", "reason", "state", "endpoint", "le", "kind"}, name


def test_every_series_the_grafana_dashboard_plots_is_exposed(user):
    import json
    import re
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json").read_text()
    )
    plotted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"simsched_[a-z_]+", target["expr"])
    }
    simulation = make_simulation(owner=user)
    token_client(user).post(
        "/convergence/data", {"simulation_id": simulation.pk, "loss_value": 0.5}, format="json"
    )
    exposed = {name for name, _ in scrape()}
    if "stopped_by" not in {f.name for f in Simulation._meta.get_fields()}:
        plotted.discard("simsched_simulations_stopped_by_guard")  # exposed once guards land
    pool = {name for name in plotted if name.startswith("simsched_db_pool_")}
    if connection.vendor != "postgresql":
        plotted -= pool  # a PostgreSQL connection pool
    assert plotted <= exposed, plotted - exposed
