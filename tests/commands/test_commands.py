import io
import threading

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.management import CommandError, call_command
from django.db import connections
from django.utils import timezone
from rest_framework.authtoken.models import Token

from convergence.models import ConvergencePoint
from machines.models import Machine
from simsched.asgi import application
from simulations.models import Simulation
from tests.factories import make_machine, make_simulation, make_user
from tests.security.helpers import token_key


def run(*args, **options) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_seed_creates_a_fleet_simulations_in_every_status_and_curves():
    run("seed", machines=12, simulations=40, points=400)
    statuses = set(Simulation.objects.values_list("status", flat=True))
    assert statuses >= {"pending", "scheduled", "running", "finished", "failed", "cancelled"}
    assert Machine.objects.count() == 12
    assert Machine.objects.filter(status=Machine.Status.MAINTENANCE).count() == 1
    finished = Simulation.objects.filter(status="finished").first()
    losses = list(
        finished.points.filter(series__metric="loss")
        .order_by("step")
        .values_list("loss_value", flat=True)
    )
    assert len(losses) == 400
    assert sum(losses[-40:]) / 40 < sum(losses[:40]) / 40 / 2  # it converges
    metrics = set(finished.series.values_list("metric", flat=True))
    assert metrics == {"loss", "val/loss", "lr", "grad_norm"}
    lr = dict(finished.points.filter(series__metric="lr").values_list("step", "loss_value"))
    peak = max(lr, key=lr.get)
    assert 0 < peak < 200 and lr[0] < lr[peak] and lr[390] < lr[peak]  # warm-up, then decay
    for simulation in Simulation.objects.filter(status__in=Simulation.ACTIVE):
        assert simulation.machine.status == Machine.Status.BUSY


@pytest.mark.django_db(transaction=True)
def test_every_seeded_time_is_in_the_past_and_matches_the_points():
    run("seed", machines=12, simulations=40, points=200)
    now = timezone.now()
    for simulation in Simulation.objects.all():
        times = [simulation.created_at, simulation.scheduled_at, simulation.started_at]
        times += [simulation.finished_at]
        known = [t for t in times if t is not None]
        assert all(t <= now for t in known), simulation.name
        assert known == sorted(known), simulation.name
        stamps = simulation.points.values_list("timestamp", flat=True)
        if simulation.finished_at and stamps:
            assert max(stamps) <= simulation.finished_at
            assert min(stamps) >= simulation.started_at


@pytest.mark.django_db(transaction=True)
def test_a_seeded_failure_says_what_its_points_show():
    """A run failed by a NaN failed at the step after its last point, recorded as the nan
    guard records it; every failed run has a reason."""
    run("seed", machines=12, simulations=200, points=300)
    failed = Simulation.objects.filter(status="failed")
    assert failed.exists() and not failed.filter(failure_reason="").exists()
    nan = failed.filter(stopped_by=Simulation.StoppedBy.NAN)
    assert nan.exists()
    for simulation in nan:
        last = simulation.points.filter(series__metric="loss").order_by("-step").first().step
        assert simulation.stop_step == last + 1
        assert simulation.failure_reason == f"non-finite loss at step {last + 1}"


@pytest.mark.django_db(transaction=True)
def test_seed_is_idempotent():
    run("seed", machines=8, simulations=20, points=100)
    counts = (Machine.objects.count(), Simulation.objects.count(), ConvergencePoint.objects.count())
    output = run("seed", machines=8, simulations=20, points=100)
    assert (
        Machine.objects.count(),
        Simulation.objects.count(),
        ConvergencePoint.objects.count(),
    ) == counts
    assert "New simulations: 0" in output


@pytest.mark.django_db(transaction=True)
def test_issue_token_for_a_machine_agent_acts_for_that_machine():
    machine = make_machine(name="gpu-a")
    key = run("issue_token", machine="gpu-a").strip()
    token = Token.objects.get(key=key)
    assert token.user.agent_machine == machine
    assert run("issue_token", machine="gpu-a").strip() == key
    assert run("issue_token", machine="gpu-a", rotate=True).strip() != key


@pytest.mark.django_db(transaction=True)
def test_issue_token_for_a_user_and_unknown_names():
    make_user("alice")
    assert Token.objects.filter(
        user__username="alice", key=run("issue_token", user="alice").strip()
    )
    with pytest.raises(CommandError):
        run("issue_token", user="nobody")
    with pytest.raises(CommandError):
        run("issue_token", machine="no-such-machine")


@pytest.mark.django_db(transaction=True)
def test_scheduler_once_reaps_silent_agents_and_assigns(settings):
    settings.SIMSCHED_HEARTBEAT_TIMEOUT = 0
    settings.SIMSCHED_MAX_RETRIES = 0
    machine = make_machine()
    stuck = make_simulation()
    waiting = make_simulation()
    assert Simulation.objects.get(pk=stuck.pk).machine == machine
    output = run("scheduler", once=True)
    assert Simulation.objects.get(pk=stuck.pk).status == Simulation.Status.FAILED
    assert Simulation.objects.get(pk=waiting.pk).status == Simulation.Status.SCHEDULED
    assert "failed 1" in output


@pytest.mark.django_db(transaction=True)
def test_demo_operator_is_created_once():
    run("demo_operator")
    run("demo_operator")
    from django.contrib.auth import get_user_model

    operator = get_user_model().objects.get(username="operator")
    assert operator.is_staff and operator.check_password("operator")


@pytest.mark.django_db(transaction=True)
def test_demo_agents_claim_report_and_finish_over_http(live_server):
    """Agents use nothing but the HTTP API: claim, start, batches of points, heartbeat, finish."""
    machine = make_machine()
    simulation = make_simulation()
    assert Simulation.objects.get(pk=simulation.pk).machine == machine

    def agents(**options):
        try:
            run("agents", **options)
        finally:
            connections.close_all()  # this thread's, or the test database outlives the run

    worker = threading.Thread(
        target=agents,
        kwargs={
            "url": live_server.url,
            "points": 120,
            "batch": 40,
            "interval": 0.0,
            "claim_interval": 0.1,
            "duration": 4.0,
        },
    )
    worker.start()
    worker.join()
    simulation.refresh_from_db()
    assert simulation.status == Simulation.Status.FINISHED
    assert simulation.points.filter(series__metric="loss").count() == 120
    assert simulation.points.filter(series__metric="lr").count() == 120
    assert Machine.objects.get(pk=machine.pk).status == Machine.Status.AVAILABLE


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
async def test_the_scheduler_commands_broadcasts_reach_a_fleet_socket(settings):
    """The command sends from an event loop of its own; through Redis, sockets served by the
    server get what it changed."""
    settings.SIMSCHED_HEARTBEAT_TIMEOUT = 0
    settings.SIMSCHED_MAX_RETRIES = 0
    await database_sync_to_async(make_machine)()
    stuck = await database_sync_to_async(make_simulation)()  # scheduled on the machine
    watcher = await database_sync_to_async(make_user)("watcher", staff=True)
    token = await database_sync_to_async(token_key)(watcher)
    fleet = WebsocketCommunicator(
        application, "/ws/fleet", headers=[(b"authorization", f"Token {token}".encode())]
    )
    assert (await fleet.connect(timeout=10))[0]
    assert (await fleet.receive_json_from(timeout=10))["type"] == "hello"

    await database_sync_to_async(run)("scheduler", once=True)  # fails the silent simulation

    while True:
        message = await fleet.receive_json_from(timeout=10)
        if message["type"] == "simulation" and message["simulation"]["id"] == stuck.pk:
            break
    assert message["simulation"]["status"] == "failed"
    await fleet.disconnect()
