"""GET /convergence/{id}/graph: a chart of at most max_points points that keeps every bucket's
first, minimum, maximum and last point, so spikes survive downsampling."""

import math
import random
from collections import defaultdict
from datetime import datetime, timedelta

import pytest

from convergence.services import Point, point_add, points_ingest
from simulations import services as simulation_services
from tests.convergence.conftest import BASE_TIME, error_of, store_points
from tests.factories import make_machine, make_simulation

BIG_RUN = 50_000


def graph(api, simulation_id: int, **query):
    response = api.get(f"/convergence/{simulation_id}/graph", query)
    assert response.status_code == 200, response.content
    return response.json()


def pairs(body) -> list[tuple[int, float]]:
    return [(p["step"], p["loss"]) for p in body["points"]]


def baseline(step: int, rng: random.Random) -> float:
    return 0.5 + 2.0 * math.exp(-step / 10_000) + rng.uniform(0.0, 0.01)


@pytest.fixture
def big_run(simulation):
    """50,000 points on a noisy decaying curve, with single-point spikes up and down at random
    steps far enough apart that no two share a chart bucket."""
    rng = random.Random(20261123)
    losses = {step: baseline(step, rng) for step in range(BIG_RUN)}
    spike_steps: list[int] = []
    while len(spike_steps) < 8:
        step = rng.randrange(1_000, BIG_RUN - 1_000)
        if all(abs(step - other) > 3_000 for other in spike_steps):
            spike_steps.append(step)
    spikes = {}
    for i, step in enumerate(spike_steps):
        spikes[step] = 50.0 + i if i % 2 == 0 else 0.001 * (i + 1)
    losses.update(spikes)
    store_points(simulation.pk, losses)
    return simulation, losses, spikes


# --- Small and empty runs -------------------------------------------------------------------


def test_a_small_run_is_returned_raw(api, simulation):
    losses = {step: 1.0 / (step + 1) for step in range(300)}
    store_points(simulation.pk, losses)

    body = graph(api, simulation.pk)

    assert body["downsampled"] is False
    assert body["raw_points"] == body["returned_points"] == 300
    assert body["bucket_width"] == 1
    assert pairs(body) == sorted(losses.items())
    assert body["simulation_id"] == simulation.pk
    assert (body["from_step"], body["to_step"]) == (0, 299)


def test_a_run_of_exactly_max_points_is_returned_raw(api, simulation):
    store_points(simulation.pk, {step: float(step % 7) for step in range(64)})

    body = graph(api, simulation.pk, max_points=64)

    assert body["downsampled"] is False
    assert body["returned_points"] == 64


def test_an_empty_simulation_has_no_points(api, simulation):
    body = graph(api, simulation.pk)

    assert body["points"] == []
    assert body["raw_points"] == body["returned_points"] == 0
    assert body["downsampled"] is False
    assert body["status"] == "pending"


def test_the_graph_of_an_unknown_simulation_is_404(api):
    response = api.get("/convergence/987654/graph")

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


# --- A big run ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("max_points", [1000, 200, 8])
def test_a_big_run_is_downsampled_keeping_every_spike_and_both_ends(api, big_run, max_points):
    simulation, losses, spikes = big_run

    body = graph(api, simulation.pk, max_points=max_points)

    assert body["downsampled"] is True
    assert body["raw_points"] == BIG_RUN
    assert body["returned_points"] == len(body["points"]) <= max_points
    returned = pairs(body)
    steps = [step for step, _ in returned]
    assert steps == sorted(set(steps))
    assert all(losses[step] == loss for step, loss in returned)
    assert (0, losses[0]) in returned
    assert (BIG_RUN - 1, losses[BIG_RUN - 1]) in returned
    if max_points >= 200:  # a bucket per spike: every one of them is drawn
        assert set(spikes.items()) <= set(returned)
    else:  # two buckets: the highest and the lowest spike still are
        highest = max(spikes.items(), key=lambda item: item[1])
        lowest = min(spikes.items(), key=lambda item: item[1])
        assert {highest, lowest} <= set(returned)


@pytest.mark.slow
def test_zooming_into_a_small_window_returns_its_raw_points(api, big_run):
    simulation, losses, _ = big_run

    body = graph(api, simulation.pk, from_step=10_000, to_step=10_499)

    assert body["downsampled"] is False
    assert body["raw_points"] == body["returned_points"] == 500
    assert (body["from_step"], body["to_step"]) == (10_000, 10_499)
    assert pairs(body) == [(step, losses[step]) for step in range(10_000, 10_500)]


@pytest.mark.slow
def test_zooming_into_a_large_window_downsamples_that_window_only(api, big_run):
    simulation, losses, spikes = big_run

    body = graph(api, simulation.pk, from_step=5_003, to_step=30_001, max_points=400)

    assert body["downsampled"] is True
    assert body["raw_points"] == 30_001 - 5_003 + 1
    assert body["returned_points"] <= 400
    steps = [step for step, _ in pairs(body)]
    assert steps[0] == 5_003 and steps[-1] == 30_001
    assert all(5_003 <= step <= 30_001 for step in steps)
    inside = {step: loss for step, loss in spikes.items() if 5_003 <= step <= 30_001}
    assert set(inside.items()) <= set(pairs(body))


def test_a_window_past_the_data_is_clamped_to_the_data(api, simulation):
    store_points(simulation.pk, {step: 1.0 for step in range(100, 200)})

    body = graph(api, simulation.pk, from_step=150, to_step=1_000_000)

    assert body["raw_points"] == 50
    assert [step for step, _ in pairs(body)] == list(range(150, 200))


def test_a_window_with_no_points_is_empty(api, simulation):
    store_points(simulation.pk, {0: 1.0, 1000: 2.0})

    body = graph(api, simulation.pk, from_step=10, to_step=20)

    assert body["points"] == []
    assert body["raw_points"] == 0


# --- Parameter validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"max_points": 7}, "max_points"),
        ({"max_points": 10_001}, "max_points"),
        ({"max_points": "many"}, "max_points"),
        ({"from_step": 10, "to_step": 9}, "to_step"),
        ({"from_step": -1}, "from_step"),
    ],
)
def test_bad_graph_parameters_are_400(api, simulation, query, field):
    response = api.get(f"/convergence/{simulation.pk}/graph", query)

    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["code"] == "invalid"
    assert field in error["fields"]


@pytest.mark.parametrize("max_points", [8, 10_000])
def test_max_points_bounds_are_accepted(api, simulation, max_points):
    store_points(simulation.pk, {0: 1.0})

    assert graph(api, simulation.pk, max_points=max_points)["returned_points"] == 1


# --- Completeness follows the simulation's status -------------------------------------------


def simulation_in(status: str):
    if status == "pending":
        return make_simulation(required_gpus=10_000)  # no machine fits: stays pending
    simulation = make_simulation(pinned_machine=make_machine())
    simulation.refresh_from_db()
    assert simulation.status == "scheduled"
    if status == "cancelled":
        return simulation_services.simulation_cancel(simulation=simulation)
    if status == "scheduled":
        return simulation
    simulation = simulation_services.simulation_start(simulation=simulation)
    if status == "finished":
        return simulation_services.simulation_finish(simulation=simulation)
    if status == "failed":
        return simulation_services.simulation_fail(simulation=simulation, reason="boom")
    return simulation


@pytest.mark.parametrize(
    ("status", "complete"),
    [
        ("pending", False),
        ("scheduled", False),
        ("running", False),
        ("finished", True),
        ("failed", True),
        ("cancelled", True),
    ],
)
def test_is_complete_only_for_final_statuses(api, status, complete):
    simulation = simulation_in(status)
    store_points(simulation.pk, {0: 1.0, 1: 0.5})

    body = graph(api, simulation.pk)

    assert body["status"] == status
    assert body["is_complete"] is complete


# --- Property: the buckets match a brute-force computation ----------------------------------


def random_steps(rng: random.Random, shape: str) -> list[int]:
    if shape == "dense":
        start = rng.choice([0, rng.randrange(1, 100_000)])
        return list(range(start, start + rng.randrange(1_500, 6_000)))
    if shape == "sparse":
        return rng.sample(range(3_000_000), rng.randrange(600, 2_500))
    if shape == "clustered":
        steps: set[int] = set()
        for _ in range(rng.randrange(2, 7)):
            start = rng.randrange(0, 5_000_000)
            steps.update(range(start, start + rng.randrange(50, 900)))
        return sorted(steps)
    # mixed: a dense start, a sparse middle, a dense tail beyond a large gap
    head = list(range(rng.randrange(0, 50), 1_200))
    middle = rng.sample(range(1_200, 400_000), 500)
    tail_start = rng.randrange(1_000_000, 20_000_000)
    return head + middle + list(range(tail_start, tail_start + 700))


def store_in_random_order(rng: random.Random, simulation_id: int, losses: dict[int, float]):
    """Mixed write paths, single points between overlapping, shuffled batches and resent
    ones: the rollup must merge them."""
    items = list(losses.items())
    rng.shuffle(items)
    singles, rest = items[:40], items[40:]
    while rest or singles:
        for step, loss in singles[:10]:  # some into buckets the batches already filled
            point_add(simulation_id=simulation_id, step=step, loss_value=loss)
        singles = singles[10:]
        size = rng.randrange(1, 3_000)
        chunk, rest = rest[:size], rest[size:]
        resent = rng.sample(items, min(len(items), 30))  # duplicates count, store nothing
        store_points(simulation_id, dict(chunk + resent))
        for step, loss in resent[:3]:
            point_add(simulation_id=simulation_id, step=step, loss_value=loss)


def expected_buckets(points: list[tuple[int, float]], width: int) -> dict[int, set]:
    by_bucket: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for step, loss in points:
        by_bucket[step // width].append((step, loss))
    expected = {}
    for bucket, members in by_bucket.items():
        members.sort()
        lowest = min(members, key=lambda p: (p[1], p[0]))
        highest = max(members, key=lambda p: (p[1], -p[0]))
        expected[bucket] = {members[0], members[-1], lowest, highest}
    return expected


def check_against_brute_force(body, losses: dict[int, float], lo: int, hi: int, max_points):
    window = sorted((step, loss) for step, loss in losses.items() if lo <= step <= hi)
    returned = pairs(body)
    assert body["raw_points"] == len(window)
    assert body["returned_points"] == len(returned) <= max_points
    assert [s for s, _ in returned] == sorted({s for s, _ in returned})
    if len(window) <= max_points:
        assert body["downsampled"] is False
        assert returned == window
        return
    assert body["downsampled"] is True
    width = body["bucket_width"]
    assert width >= 1
    got: dict[int, set] = defaultdict(set)
    for step, loss in returned:
        got[step // width].add((step, loss))
    assert dict(got) == expected_buckets(window, width)


@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "tied"])
@pytest.mark.parametrize("seed", range(8))
def test_graph_buckets_match_a_brute_force_computation(api, simulation, seed, tied):
    """`tied`: a handful of values, so that most buckets hold their min and max at several
    steps (the earliest is the one shown)."""
    rng = random.Random(seed)
    shape = ["dense", "sparse", "clustered", "mixed"][seed % 4]
    steps = random_steps(rng, shape)
    if tied:
        losses = {step: float(rng.randrange(-3, 4)) for step in steps}
    else:
        losses = {step: rng.uniform(-5.0, 5.0) for step in steps}
    store_in_random_order(rng, simulation.pk, losses)
    first, last = min(steps), max(steps)

    windows = [(None, None), (None, None)]
    for _ in range(3):
        lo = rng.randrange(first, last + 1)
        windows.append((lo, rng.randrange(lo, last + 2)))
    windows.append((max(first - 10, 0), last + 10))
    for from_step, to_step in windows:
        max_points = rng.choice([8, 9, 16, 50, 100, 333, 1000])
        query = {"max_points": max_points}
        if from_step is not None:
            query.update(from_step=from_step, to_step=to_step)
        body = graph(api, simulation.pk, **query)
        lo = first if from_step is None else from_step
        hi = last if to_step is None else to_step
        check_against_brute_force(body, losses, lo, hi, max_points)


# --- Wall-clock times ------------------------------------------------------------------------


def stamps(body) -> dict[int, datetime]:
    return {p["step"]: datetime.fromisoformat(p["timestamp"]) for p in body["points"]}


def test_raw_points_carry_the_time_they_were_taken(api, simulation):
    store_points(simulation.pk, {step: 1.0 for step in range(50)})

    body = graph(api, simulation.pk)

    assert stamps(body) == {step: BASE_TIME + timedelta(seconds=step) for step in range(50)}


def test_downsampled_points_carry_times_exact_at_bucket_edges(api, big_run):
    """The fixture's points are taken one second per step: the first and last point of a bucket
    carry their stored time, and the min and max, interpolated by step, land on theirs too."""
    simulation, _, _ = big_run

    for query in ({}, {"from_step": 12_345, "to_step": 33_333}):
        body = graph(api, simulation.pk, **query)

        assert body["downsampled"] is True
        assert stamps(body) == {
            step: BASE_TIME + timedelta(seconds=step) for step in stamps(body)
        }, query


def test_times_follow_the_first_and_last_step_whatever_the_order_batches_arrive(api, simulation):
    late = BASE_TIME + timedelta(days=1)
    points_ingest(
        simulation_id=simulation.pk,
        points=[Point(step, 1.0, late + timedelta(seconds=step)) for step in range(5_000, 9_000)],
    )
    points_ingest(  # earlier steps arrive last, with earlier times
        simulation_id=simulation.pk,
        points=[Point(step, 1.0, BASE_TIME + timedelta(seconds=step)) for step in range(5_000)],
    )

    body = graph(api, simulation.pk, max_points=100)
    times = stamps(body)

    assert body["downsampled"] is True
    assert times[0] == BASE_TIME
    assert times[max(times)] == late + timedelta(seconds=8_999)
    in_step_order = [times[step] for step in sorted(times)]
    assert in_step_order == sorted(in_step_order)
