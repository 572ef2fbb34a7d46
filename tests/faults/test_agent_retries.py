"""Agents retry: a batch whose answer never arrived is sent again, sometimes overlapping the
next one, sometimes at the same time as the first try. Each step is stored exactly once."""

import threading

import pytest

from convergence.models import ConvergencePoint, ConvergenceRollup
from tests.servers import http, start_daphne

pytestmark = pytest.mark.slow
BATCH = 2000


@pytest.fixture
def server(test_database_url):
    daphne = start_daphne({"DATABASE_URL": test_database_url})
    yield daphne
    daphne.stop()


def _batch(first: int, count: int) -> dict:
    return {
        "points": [{"step": s, "loss_value": 3.0 - s / 10_000} for s in range(first, first + count)]
    }


def _stored(simulation) -> list[int]:
    return list(
        ConvergencePoint.objects.filter(simulation=simulation)
        .order_by("step")
        .values_list("step", flat=True)
    )


def _top_rollup_count(simulation) -> int:
    top = ConvergenceRollup.objects.filter(simulation=simulation).order_by("-level").first()
    return sum(
        ConvergenceRollup.objects.filter(simulation=simulation, level=top.level).values_list(
            "count", flat=True
        )
    )


def test_a_resent_and_an_overlapping_batch_store_each_step_once(server, agent_run):
    simulation, token = agent_run
    url = f"{server.url}/convergence/{simulation.pk}/points"
    first = http("POST", url, token=token, body=_batch(0, BATCH))
    assert first.json() == {"stored": BATCH, "duplicates": 0}
    again = http("POST", url, token=token, body=_batch(0, BATCH))
    assert again.json() == {"stored": 0, "duplicates": BATCH}
    overlapping = http("POST", url, token=token, body=_batch(BATCH // 2, BATCH))
    assert overlapping.json() == {"stored": BATCH // 2, "duplicates": BATCH // 2}
    assert _stored(simulation) == list(range(BATCH + BATCH // 2))
    assert _top_rollup_count(simulation) == BATCH + BATCH // 2
    graph = http("GET", f"{server.url}/convergence/{simulation.pk}/graph", token=token).json()
    assert graph["raw_points"] == BATCH + BATCH // 2


def test_a_batch_whose_answer_timed_out_is_stored_once_when_resent(server, agent_run):
    simulation, token = agent_run
    url = f"{server.url}/convergence/{simulation.pk}/points"
    try:  # the agent gives up waiting; the server may or may not have stored it
        http("POST", url, token=token, body=_batch(0, 10_000), timeout=0.001)
    except (TimeoutError, OSError):
        pass
    resent = http("POST", url, token=token, body=_batch(0, 10_000))
    assert resent.status == 200
    assert resent.json()["stored"] + resent.json()["duplicates"] == 10_000
    assert _stored(simulation) == list(range(10_000))


def test_the_same_batch_sent_twice_at_once_is_stored_once(server, agent_run):
    simulation, token = agent_run
    url = f"{server.url}/convergence/{simulation.pk}/points"
    answers = []

    def send():
        answers.append(http("POST", url, token=token, body=_batch(0, BATCH), timeout=60))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [a.status for a in answers] == [200, 200]
    assert sorted(a.json()["stored"] for a in answers) == [0, BATCH]
    assert _stored(simulation) == list(range(BATCH))
    assert _top_rollup_count(simulation) == BATCH


def test_a_single_point_resent_is_stored_once(server, agent_run):
    simulation, token = agent_run
    point = {"simulation_id": simulation.pk, "step": 7, "loss_value": 0.5}
    assert http("POST", f"{server.url}/convergence/data", token=token, body=point).status == 201
    assert http("POST", f"{server.url}/convergence/data", token=token, body=point).status == 200
    bare = {"step": 7, "loss_value": 0.5}
    again = http(
        "POST", f"{server.url}/convergence/{simulation.pk}/add-bare-sql", token=token, body=bare
    )
    assert again.status == 200
    assert _stored(simulation) == [7]
