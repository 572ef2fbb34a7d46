"""Many series per simulation: the metric on every write and read, the values form, the metrics
and compare endpoints, and writers that race without failing."""

import random
import threading

import pytest
from django.db import connection

from convergence.models import ConvergencePoint, ConvergenceSeries
from convergence.services import MAX_STEP
from tests.convergence.conftest import error_of, store_points
from tests.factories import make_simulation, token_client

MISSING_ID = 987_654


def points_of(simulation, metric: str) -> dict[int, float]:
    rows = ConvergencePoint.objects.filter(simulation=simulation, series__metric=metric)
    return dict(rows.values_list("step", "loss_value"))


def post_points(api, simulation_id, points):
    return api.post(f"/convergence/{simulation_id}/points", {"points": points}, format="json")


def test_a_single_point_without_a_metric_is_a_loss_point(api, simulation):
    response = api.post(
        "/convergence/data", {"simulation_id": simulation.pk, "loss_value": 0.5}, format="json"
    )

    assert response.status_code == 201, response.content
    assert response.json()["metric"] == "loss"
    assert points_of(simulation, "loss") == {0: 0.5}


@pytest.mark.parametrize("path", ["/convergence/data", "/convergence/{id}/add-bare-sql"])
def test_single_points_of_another_metric_take_that_series_next_step(api, simulation, path):
    url = path.format(id=simulation.pk)
    body = {"simulation_id": simulation.pk}
    api.post(url, {**body, "loss_value": 2.0, "step": 41}, format="json")

    first = api.post(url, {**body, "loss_value": 0.001, "metric": "lr"}, format="json")
    second = api.post(url, {**body, "loss_value": 0.002, "metric": "lr"}, format="json")

    assert (first.status_code, second.status_code) == (201, 201)
    assert points_of(simulation, "lr") == {0: 0.001, 1: 0.002}
    assert points_of(simulation, "loss") == {41: 2.0}


def test_the_values_form_stores_one_value_per_metric_and_counts_values(api, simulation):
    points = [{"step": s, "values": {"loss": 1.0 / (s + 1), "lr": 0.1 * s}} for s in range(10)]

    response = post_points(api, simulation.pk, points)
    again = post_points(api, simulation.pk, points)

    assert response.json() == {"stored": 20, "duplicates": 0}
    assert again.json() == {"stored": 0, "duplicates": 20}
    assert points_of(simulation, "lr") == {s: 0.1 * s for s in range(10)}
    assert ConvergenceSeries.objects.filter(simulation=simulation).count() == 2


def test_both_point_forms_mix_in_one_batch(api, simulation):
    points = [
        {"step": 0, "loss_value": 2.0},
        {"step": 0, "loss_value": 3.0, "metric": "val/loss"},
        {"step": 1, "values": {"loss": 1.5, "grad_norm": 7.0}},
    ]

    response = post_points(api, simulation.pk, points)

    assert response.json() == {"stored": 4, "duplicates": 0}
    assert points_of(simulation, "val/loss") == {0: 3.0}


def test_a_conflict_names_its_series_and_stores_nothing(api, simulation):
    post_points(api, simulation.pk, [{"step": 3, "values": {"lr": 0.5}}])

    response = post_points(
        api,
        simulation.pk,
        [{"step": 2, "values": {"loss": 1.0, "lr": 0.4}}, {"step": 3, "values": {"lr": 0.9}}],
    )

    assert response.status_code == 409
    error = error_of(response)
    assert '"lr"' in error["message"]
    assert error["details"]["metrics"] == ["lr"]
    assert error["details"]["conflicts"] == [
        {"metric": "lr", "step": 3, "stored_loss": 0.5, "sent_loss": 0.9}
    ]
    assert points_of(simulation, "loss") == {}
    assert not ConvergenceSeries.objects.filter(simulation=simulation, metric="loss").exists()


def test_the_same_step_of_two_metrics_is_no_conflict(api, simulation):
    url = "/convergence/data"
    base = {"simulation_id": simulation.pk, "step": 5}
    api.post(url, {**base, "loss_value": 1.0}, format="json")

    response = api.post(url, {**base, "loss_value": 9.0, "metric": "grad_norm"}, format="json")

    assert response.status_code == 201


def test_more_than_10000_values_in_one_request_are_refused(api, simulation):
    points = [{"step": s, "values": {"loss": 1.0, "lr": 1.0}} for s in range(5001)]

    response = post_points(api, simulation.pk, points)

    assert response.status_code == 400
    assert ConvergencePoint.objects.count() == 0


@pytest.mark.parametrize(
    "metric",
    ["", "a" * 101, "loss value", "loss\n", "x\ny", "ünï", "a,b", "../x;DROP", None, 7, True],
)
def test_bad_metric_names_are_refused_everywhere(api, simulation, metric):
    single = api.post(
        "/convergence/data",
        {"simulation_id": simulation.pk, "loss_value": 1.0, "metric": metric},
        format="json",
    )
    batch = post_points(api, simulation.pk, [{"step": 0, "loss_value": 1.0, "metric": metric}])
    values = post_points(api, simulation.pk, [{"step": 0, "values": {str(metric): 1.0}}])

    assert (single.status_code, batch.status_code) == (400, 400)
    assert values.status_code == (200 if str(metric) in {"None", "7", "True"} else 400)
    if isinstance(metric, str) and metric and metric == metric.strip() and "," not in metric:
        graph = api.get(f"/convergence/{simulation.pk}/graph", {"metric": metric})
        assert graph.status_code == 400


def test_metrics_lists_each_series_with_its_summary(api, simulation):
    points = [{"step": s, "values": {"loss": 10.0 - s, "lr": 0.01 * s}} for s in range(100)]
    post_points(api, simulation.pk, points)

    response = api.get(f"/convergence/{simulation.pk}/metrics")

    assert response.status_code == 200
    body = response.json()
    assert [m["metric"] for m in body["metrics"]] == ["loss", "lr"]
    loss = body["metrics"][0]
    assert loss == {
        "metric": "loss",
        "points": 100,
        "first_step": 0,
        "last_step": 99,
        "latest": -89.0,
        "min": -89.0,
        "max": 10.0,
    }


def test_metrics_of_an_unknown_simulation_is_404(api):
    assert api.get(f"/convergence/{MISSING_ID}/metrics").status_code == 404


def test_graph_of_several_metrics_answers_one_chart_per_metric(api, simulation):
    points = [{"step": s, "values": {"loss": 1.0, "lr": 2.0}} for s in range(5000)]
    post_points(api, simulation.pk, points)
    post_points(api, simulation.pk, [{"step": 6000, "values": {"lr": 99.0}}])

    response = api.get(
        f"/convergence/{simulation.pk}/graph", {"metric": "loss,lr,nothing", "max_points": 100}
    )

    assert response.status_code == 200
    body = response.json()
    assert "points" not in body
    assert [s["metric"] for s in body["series"]] == ["loss", "lr", "nothing"]
    loss, lr, nothing = body["series"]
    assert loss["downsampled"] and loss["returned_points"] <= 100
    assert max(p["loss"] for p in lr["points"]) == 99.0
    assert nothing["points"] == [] and nothing["raw_points"] == 0


def test_graph_of_one_metric_keeps_todays_shape(api, simulation):
    store_points(simulation.pk, {s: 1.0 for s in range(10)})

    body = api.get(f"/convergence/{simulation.pk}/graph").json()

    assert body["metric"] == "loss" and body["raw_points"] == 10 and "series" not in body


def test_stream_and_data_read_one_series(api, simulation):
    post_points(
        api, simulation.pk, [{"step": s, "values": {"loss": 1.0, "lr": 0.5}} for s in range(5)]
    )

    stream = api.get(f"/convergence/{simulation.pk}/stream", {"metric": "lr", "since_step": 2})
    page = api.get(f"/convergence/{simulation.pk}/data", {"metric": "lr", "limit": 2})

    assert [p["step"] for p in stream.json()["points"]] == [3, 4]
    assert stream.json()["metric"] == "lr"
    assert [(p["step"], p["loss_value"], p["metric"]) for p in page.json()["results"]] == [
        (0, 0.5, "lr"),
        (1, 0.5, "lr"),
    ]
    following = api.get(page.json()["next"])
    assert [p["step"] for p in following.json()["results"]] == [2, 3]


def test_csv_without_a_metric_is_the_whole_run_in_long_form(api, simulation):
    post_points(
        api, simulation.pk, [{"step": s, "values": {"loss": 1.0, "lr": 0.5}} for s in range(3)]
    )
    from tests.convergence.test_points_api import streamed_text

    response = api.get(f"/convergence/{simulation.pk}/data", {"format": "csv"})

    lines = streamed_text(response).splitlines()
    assert lines[0] == "step,metric,value,timestamp"
    assert [line.rsplit(",", 1)[0] for line in lines[1:]] == [
        "0,loss,1.0",
        "0,lr,0.5",
        "1,loss,1.0",
        "1,lr,0.5",
        "2,loss,1.0",
        "2,lr,0.5",
    ]


@pytest.mark.parametrize(
    "cursor",
    [
        "cD1hYmM=",
        "cD0tMQ==",
        "cD05OTk5OTk5OTk5OTk5",
        "!!!",
        "bz0xMDAwMDAwMDA=",
        "eD0x",
        "cD0x&r=x",
        "cD3Zog==",
    ],
)
def test_a_crafted_data_cursor_is_a_400(api, simulation, cursor):
    store_points(simulation.pk, {s: 1.0 for s in range(3)})

    response = api.get(f"/convergence/{simulation.pk}/data", {"cursor": cursor})

    assert response.status_code == 400, response.content
    assert "cursor" in error_of(response)["fields"]


def test_the_next_step_past_the_last_one_is_a_409_and_stores_nothing(api, simulation):
    api.post(
        "/convergence/data",
        {"simulation_id": simulation.pk, "loss_value": 1.0, "step": MAX_STEP},
        format="json",
    )

    for url in ["/convergence/data", f"/convergence/{simulation.pk}/add-bare-sql"]:
        response = api.post(url, {"simulation_id": simulation.pk, "loss_value": 2.0}, format="json")
        assert response.status_code == 409, response.content
        assert error_of(response)["code"] == "steps_exhausted"
    assert points_of(simulation, "loss") == {MAX_STEP: 1.0}


@pytest.mark.parametrize(
    "point",
    [
        {"step": 0, "loss_value": 10**400},
        {"step": 0, "values": {"loss": 10**400}},
        {"step": 10**400, "loss_value": 1.0},
        {"step": 0, "loss_value": 1.0, "timestamp": "9999-12-31T23:59:59-23:59"},
        {"step": 0, "loss_value": 1.0, "timestamp": "0001-01-01T00:00:00+23:59"},
    ],
)
def test_numbers_at_the_edges_in_a_batch_are_a_400(api, simulation, point):
    response = post_points(api, simulation.pk, [point])

    assert response.status_code == 400, response.content
    assert ConvergencePoint.objects.count() == 0


@pytest.mark.parametrize(
    "query",
    [
        {"max_points": 10**400},
        {"max_points": "1e3"},
        {"from_step": -1},
        {"from_step": 2**31},
        {"to_step": "9" * 5000},
        {"from_step": 5, "to_step": 4},
        {"metric": ","},
    ],
)
def test_numbers_at_the_edges_of_graph_queries_are_a_400(api, simulation, query):
    response = api.get(f"/convergence/{simulation.pk}/graph", query)

    assert response.status_code == 400, response.content


@pytest.mark.parametrize(
    "query", [{"limit": 0}, {"limit": 10**400}, {"since_step": -2}, {"since_step": 2**31}]
)
def test_numbers_at_the_edges_of_stream_queries_are_a_400(api, simulation, query):
    assert api.get(f"/convergence/{simulation.pk}/stream", query).status_code == 400


def test_compare_overlays_one_metric_of_several_runs(api, user, simulation):
    other = make_simulation(name="other-run", owner=user)
    post_points(api, simulation.pk, [{"step": s, "loss_value": 2.0} for s in range(50)])
    post_points(api, other.pk, [{"step": s, "loss_value": 3.0} for s in range(20)])

    response = api.get(
        "/convergence/compare",
        {"simulations": f"{other.pk},{simulation.pk}", "metric": "loss", "max_points": 16},
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["metric"] == "loss"
    runs = body["simulations"]
    assert [r["simulation_id"] for r in runs] == [other.pk, simulation.pk]
    assert runs[0]["name"] == "other-run" and runs[0]["raw_points"] == 20
    assert all(r["returned_points"] <= 16 for r in runs)


def test_a_repeated_list_parameter_is_the_whole_list(api, user, simulation):
    """`?simulations=1&simulations=2`, as OpenAPI's exploded arrays and `requests` send a list:
    both runs, not the last one; `?metric=a&metric=b` the same for the graph's series."""
    other = make_simulation(name="other-run", owner=user)
    post_points(api, simulation.pk, [{"step": 0, "values": {"loss": 2.0, "lr": 0.1}}])
    post_points(api, other.pk, [{"step": 0, "loss_value": 3.0}])

    compared = api.get(f"/convergence/compare?simulations={other.pk}&simulations={simulation.pk}")
    graphed = api.get(f"/convergence/{simulation.pk}/graph?metric=loss&metric=lr")
    too_many = "&".join(f"simulations={simulation.pk + i}" for i in range(21))

    assert compared.status_code == 200, compared.content
    assert [r["simulation_id"] for r in compared.json()["simulations"]] == [other.pk, simulation.pk]
    assert graphed.status_code == 200, graphed.content
    assert [series["metric"] for series in graphed.json()["series"]] == ["loss", "lr"]
    assert api.get(f"/convergence/compare?{too_many}").status_code == 400


def test_compare_refuses_an_unknown_simulation_instead_of_dropping_it(api, simulation):
    response = api.get("/convergence/compare", {"simulations": f"{simulation.pk},{MISSING_ID}"})

    assert response.status_code == 404
    assert str(MISSING_ID) in error_of(response)["message"]


def test_compare_is_for_signed_in_callers(anon_api, simulation):
    response = anon_api.get("/convergence/compare", {"simulations": str(simulation.pk)})

    assert response.status_code in (401, 403)


@pytest.mark.parametrize("ids", ["", "1,x", ",".join(str(i) for i in range(1, 22)), "0", "-1"])
def test_compare_needs_1_to_20_simulation_ids(api, ids):
    assert api.get("/convergence/compare", {"simulations": ids}).status_code == 400


@pytest.mark.postgres
@pytest.mark.slow
def test_mixed_concurrent_writers_never_fail(user, simulation):
    """Single points without a step, single points with one, and batches with unsorted,
    overlapping steps over two series, all at once: 300 requests, 0 errors."""
    errors, lock, batch_steps, stepless_steps = [], threading.Lock(), set(), []

    def run(kind: int, seed: int):
        client = token_client(user)
        rng = random.Random(seed)
        try:
            for _ in range(50):
                if kind == 0:
                    body = {"simulation_id": simulation.pk, "loss_value": 1.0}
                    response = client.post("/convergence/data", body, format="json")
                    if response.status_code == 201:
                        with lock:
                            stepless_steps.append(response.json()["step"])
                elif kind == 1:
                    steps = rng.sample(range(100_000, 100_400), 40)
                    with lock:
                        batch_steps.update(steps)
                    points = [{"step": s, "values": {"loss": 1.0, "lr": 0.5}} for s in steps]
                    response = post_points(client, simulation.pk, points)
                else:
                    body = {
                        "simulation_id": simulation.pk,
                        "loss_value": 1.0,
                        "metric": "lr",
                        "step": 200_000 + rng.randrange(400),
                    }
                    response = client.post("/convergence/data", body, format="json")
                if response.status_code not in (200, 201):
                    with lock:
                        errors.append((kind, response.status_code, response.content[:200]))
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(k % 3, k)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    # Each of the 100 stepless points got a step of its own (after whatever was stored then).
    assert len(set(stepless_steps)) == 100
    assert len(points_of(simulation, "loss")) == len(batch_steps | set(stepless_steps))
