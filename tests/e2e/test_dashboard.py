"""The dashboard in a real browser against a real daphne: live charts, reconnects, the
simulated run button and the fleet page."""

from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from rest_framework.authtoken.models import Token

from convergence.curves import LossCurve
from convergence.models import ConvergencePoint
from convergence.services import Point, points_ingest
from machines.models import Machine
from machines.services import machine_set_status
from simulations.models import Simulation
from simulations.services import simulation_finish, simulation_start
from tests.e2e.conftest import PASSWORD, api, orm, screenshot, sign_in
from tests.factories import make_machine, make_simulation, make_user

pytestmark = pytest.mark.e2e

CHART_STEPS = """() => Chart.getChart(document.getElementById("chart")).data.datasets[0].data
    .map((p) => p.x)"""
SHOWN = f"({CHART_STEPS})()"  # the chart's steps, as an expression
CHART_AREA = """(() => {
    const { left, right, top, bottom } = Chart.getChart(document.getElementById("chart")).chartArea;
    return { left, right, top, bottom };
})()"""
CHART_SETTINGS = """(() => {
    const chart = Chart.getChart(document.getElementById("chart"));
    const [loss, smoothed] = chart.data.datasets;
    return {
        scale: chart.options.scales.y.type,
        smoothed: !smoothed.hidden,
        same_length: smoothed.data.length === loss.data.length,
    };
})()"""
HAS_STEPS = """(steps) => {
    const chart = Chart.getChart(document.getElementById("chart"));
    if (!chart) return false;
    const shown = new Set(chart.data.datasets[0].data.map((p) => p.x));
    return steps.every((step) => shown.has(step));
}"""


# --- Helpers ---------------------------------------------------------------------------------


def _world(*, with_machine: bool = True, points: int = 0) -> SimpleNamespace:
    user = make_user("operator", password=PASSWORD)
    machine = make_machine(name="gpu-h100-01") if with_machine else None
    simulation = make_simulation(name="llama-7b-finetune", owner=user)
    if points:
        _store_points(simulation.pk, range(points))
    simulation.refresh_from_db()
    token = Token.objects.create(user=user).key
    return SimpleNamespace(user=user, machine=machine, simulation=simulation, token=token)


def _store_points(simulation_id: int, steps) -> None:
    curve = LossCurve(simulation_id, total_steps=max(len(steps), 1000))
    now = datetime.now(UTC)
    points_ingest(simulation_id=simulation_id, points=[Point(s, curve.loss(s), now) for s in steps])


def _stored_steps(simulation_id: int) -> list[int]:
    rows = ConvergencePoint.objects.filter(simulation_id=simulation_id).order_by("step")
    return list(rows.values_list("step", flat=True))


def _status(simulation_id: int) -> str:
    return Simulation.objects.get(pk=simulation_id).status


def open_simulation(page, server, world) -> None:
    sign_in(page, server, world.user.username)
    page.goto(f"{server.url}/dashboard/simulations/{world.simulation.pk}")
    page.wait_for_selector('#connection[data-state="live"]')


# --- Simulation page -------------------------------------------------------------------------


def test_points_posted_to_the_api_appear_on_the_chart_within_a_second(live, page):
    world = orm(_world)
    open_simulation(page, live, world)
    points = [{"step": s, "loss_value": 2.0 / (s + 1)} for s in range(10)]

    api(live, world.token, "POST", f"/convergence/{world.simulation.pk}/points", {"points": points})

    page.wait_for_function(HAS_STEPS, arg=list(range(10)), timeout=1000)
    assert page.text_content("#point-count") == "10"
    assert page.text_content("#latest-loss") == "0.20000"


def test_chart_has_no_missing_point_after_the_server_restarts(live, page):
    world = orm(_world, points=50)
    open_simulation(page, live, world)
    page.wait_for_function(HAS_STEPS, arg=list(range(50)))

    live.stop()
    page.wait_for_selector('#connection[data-state="reconnecting"]')
    orm(_store_points, world.simulation.pk, range(50, 180))
    live.start()

    stored = orm(_stored_steps, world.simulation.pk)
    page.wait_for_function(HAS_STEPS, arg=stored, timeout=20_000)
    assert page.evaluate(CHART_STEPS) == stored
    # And the socket is live again, not only backfilled.
    points = [{"step": 180, "loss_value": 0.5}]
    api(live, world.token, "POST", f"/convergence/{world.simulation.pk}/points", {"points": points})
    page.wait_for_function(HAS_STEPS, arg=[180])
    assert page.text_content("#point-count") == "181"


def test_simulated_run_button_runs_the_simulation_and_stop_finishes_it(live, page):
    world = orm(_world)
    open_simulation(page, live, world)
    assert page.get_attribute("#status", "data-status") == "scheduled"

    page.click("#run-button")
    page.wait_for_selector('#status[data-status="running"]')
    page.wait_for_function(f"{SHOWN}.length >= 10")
    grown = page.evaluate(CHART_STEPS)
    page.wait_for_function(f"{SHOWN}.length > {len(grown)}")
    assert page.text_content("#run-button") == "Stop"

    page.click("#run-button")
    page.wait_for_selector('#status[data-status="finished"]')
    assert page.is_hidden("#run-button")
    assert orm(_status, world.simulation.pk) == Simulation.Status.FINISHED
    page.wait_for_function(HAS_STEPS, arg=orm(_stored_steps, world.simulation.pk))


def test_a_refused_simulated_run_shows_why(live, page):
    world = orm(_world, with_machine=False)
    open_simulation(page, live, world)

    page.click("#run-button")

    page.wait_for_selector("#error:not([hidden])")
    assert "Waiting for a machine" in page.text_content("#error")
    assert page.get_attribute("#status", "data-status") == "pending"
    assert page.text_content("#run-button") == "Start simulated run"


def test_zooming_into_a_step_range_shows_only_those_steps_and_reset_restores_all(live, page):
    world = orm(_world, points=5000)
    open_simulation(page, live, world)
    page.wait_for_function(f"{SHOWN}.at(-1) === 4999")
    assert "downsampled" in page.text_content("#chart-info")

    page.fill("#from-step", "1200")
    page.fill("#to-step", "1300")
    page.click("#zoom-form button[type=submit]")

    page.wait_for_function(f"{SHOWN}.length === 101")
    assert page.evaluate(CHART_STEPS) == list(range(1200, 1301))
    page.click("#zoom-reset")
    page.wait_for_function(f"{SHOWN}.at(-1) === 4999 && {SHOWN}[0] === 0")


def test_dragging_across_the_chart_zooms_into_that_step_range(live, page):
    world = orm(_world, points=5000)
    open_simulation(page, live, world)
    page.wait_for_function(f"{SHOWN}.at(-1) === 4999")
    box = page.locator("#chart").bounding_box()
    area = page.evaluate(CHART_AREA)
    y = box["y"] + (area["top"] + area["bottom"]) / 2
    left, width = box["x"] + area["left"], area["right"] - area["left"]

    page.mouse.move(left + width * 0.25, y)
    page.mouse.down()
    page.mouse.move(left + width * 0.5, y, steps=5)
    page.mouse.up()

    page.wait_for_function("!document.getElementById('zoom-reset').disabled")
    first, last = int(page.input_value("#from-step")), int(page.input_value("#to-step"))
    assert 1000 < first < 1500 < 2000 < last < 2700
    page.wait_for_function(f"{SHOWN}[0] >= {first} && {SHOWN}.at(-1) <= {last}")
    assert page.evaluate(CHART_STEPS) == list(range(first, last + 1))


def test_cancel_button_cancels_with_the_session_and_csrf_token(live, page):
    world = orm(_world)
    open_simulation(page, live, world)
    page.on("dialog", lambda dialog: dialog.accept())

    page.click("#cancel-button")

    page.wait_for_selector('#status[data-status="cancelled"]')
    assert page.is_hidden("#cancel-button")
    assert page.is_hidden("#run-button")
    assert orm(_status, world.simulation.pk) == Simulation.Status.CANCELLED


# --- Fleet page ------------------------------------------------------------------------------


def test_fleet_page_shows_a_cancelled_simulation_and_a_new_one_live(live, page):
    world = orm(_world)
    sign_in(page, live, world.user.username)
    page.wait_for_selector('#connection[data-state="live"]')
    row = f'#simulations tr[data-id="{world.simulation.pk}"]'
    machine_row = f'#machines tr[data-id="{world.machine.pk}"]'
    assert page.get_attribute(f"{row} [data-field=status]", "data-status") == "scheduled"
    assert page.text_content(f"{machine_row} [data-field=running]") == "llama-7b-finetune"

    api(live, world.token, "POST", f"/simulations/{world.simulation.pk}/cancel")

    page.wait_for_selector(f'{row} [data-field=status][data-status="cancelled"]')
    page.wait_for_selector(f'{machine_row} [data-field=status][data-status="available"]')
    assert page.text_content(f"{machine_row} [data-field=running]") == "idle"

    created = api(live, world.token, "POST", "/simulations/", {"name": "mistral-eval"})
    new_row = f'#simulations tr[data-id="{created["id"]}"]'
    page.wait_for_selector(f'{new_row} [data-field=status][data-status="scheduled"]')
    assert page.text_content(f"{new_row} [data-field=name]") == "mistral-eval"
    page.wait_for_selector(f'{machine_row} [data-field=status][data-status="busy"]')


# --- How the pages look ----------------------------------------------------------------------


def _busy_fleet() -> SimpleNamespace:
    user = make_user("operator", password=PASSWORD, staff=True)
    specs = [
        ("gpu-a100-01", "8x NVIDIA A100 80GB", "AMD EPYC 7763", 8, 1024, 128, "24.50"),
        ("gpu-h100-01", "8x NVIDIA H100", "AMD EPYC 9654", 8, 2048, 192, "38.00"),
        ("gpu-h100-02", "8x NVIDIA H100", "AMD EPYC 9654", 8, 2048, 192, "38.00"),
        ("gpu-l4-01", "4x NVIDIA L4", "Intel Xeon 8481C", 4, 256, 48, "4.20"),
        ("cpu-large-01", "", "AMD EPYC 9754", 0, 768, 256, "9.10"),
    ]
    machines = [
        make_machine(
            name=name,
            gpu=gpu,
            cpu=cpu,
            gpu_count=gpus,
            memory=memory,
            cpu_cores=cores,
            hourly_cost=Decimal(cost),
        )
        for name, gpu, cpu, gpus, memory, cores, cost in specs
    ]
    machine_set_status(machine=machines[4], status=Machine.Status.MAINTENANCE)
    names = ["llama-7b-finetune", "vit-b16-imagenet", "whisper-small-asr", "bert-distill"]
    runs = [make_simulation(name=n, owner=user, required_gpus=4) for n in names]
    for run, steps in zip(runs, [6000, 2400, 900, 3000], strict=True):
        _store_points(run.pk, range(steps))
    for run in runs[:2]:
        simulation_start(simulation=Simulation.objects.get(pk=run.pk))
    done = Simulation.objects.get(pk=runs[3].pk)
    simulation_start(simulation=done)
    simulation_finish(simulation=Simulation.objects.get(pk=done.pk))
    make_simulation(name="gpt-neo-pretrain", owner=user, required_gpus=8, priority=5)
    make_simulation(name="sweep-lr-3e-4", owner=user, required_gpus=4)
    make_simulation(name="giant-moe", owner=user, required_gpus=16)
    token = Token.objects.create(user=user).key
    return SimpleNamespace(user=user, simulation=runs[0], token=token)


def test_login_fleet_and_simulation_pages_render_a_busy_fleet(live, page):
    world = orm(_busy_fleet)
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{live.url}/")
    page.wait_for_url("**/login/?next=/")
    screenshot(page, "login")

    sign_in(page, live, world.user.username)
    page.wait_for_selector('#connection[data-state="live"]')
    assert page.locator("#machines tbody tr").count() == 5
    assert page.locator("#simulations tbody tr").count() == 7
    page.wait_for_selector("text=No machine in the fleet has 16 GPUs")
    screenshot(page, "fleet")

    page.click(f'#simulations tr[data-id="{world.simulation.pk}"] [data-field=name]')
    page.wait_for_selector('#connection[data-state="live"]')
    page.wait_for_function(f"{SHOWN}.at(-1) === 5999")
    page.check("#smoothing")
    page.check("#log-scale")
    assert page.evaluate(CHART_SETTINGS) == {
        "scale": "logarithmic",
        "smoothed": True,
        "same_length": True,
    }
    assert page.text_content("#point-count") == "6,000"
    screenshot(page, "simulation")
    ws_origin = live.url.replace("http://", "ws://")
    assert [url for url in requested if not url.startswith((live.url, ws_origin))] == []
