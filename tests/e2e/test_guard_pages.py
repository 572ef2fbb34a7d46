"""The pages show why a run was stopped (live) and the owners' budget use."""

import urllib.error
from decimal import Decimal
from types import SimpleNamespace

import pytest
from rest_framework.authtoken.models import Token

from machines.services import machine_agent_user
from simulations.models import Budget
from simulations.services import simulation_start
from tests.e2e.conftest import PASSWORD, api, orm, screenshot, sign_in
from tests.factories import make_machine, make_simulation, make_user

pytestmark = pytest.mark.e2e


def _guarded_run() -> SimpleNamespace:
    user = make_user("operator", password=PASSWORD)
    machine = make_machine(name="gpu-h100-01", hourly_cost=Decimal("36.00"))
    simulation = make_simulation(name="diverging-run", owner=user, max_duration=7200)
    simulation_start(simulation=simulation)
    Budget.objects.create(user=user, monthly_budget=Decimal("1000"), gpu_cap=16)
    agent = Token.objects.create(user=machine_agent_user(machine=machine)).key
    return SimpleNamespace(user=user, simulation=simulation, agent=agent)


def test_a_nan_stop_appears_live_on_the_simulation_page(live, page):
    world = orm(_guarded_run)
    sign_in(page, live, world.user.username)
    page.goto(f"{live.url}/dashboard/simulations/{world.simulation.pk}")
    page.wait_for_selector('#connection[data-state="live"]')

    body = {"points": [{"step": 3, "loss_value": "NaN"}]}
    with pytest.raises(urllib.error.HTTPError) as refused:
        api(live, world.agent, "POST", f"/convergence/{world.simulation.pk}/points", body)
    assert refused.value.code == 400

    page.wait_for_selector('#status[data-status="failed"]')
    page.wait_for_selector("text=Stopped by nan: non-finite loss at step 3")
    assert "machine-hours" in page.text_content("#status-note")
    screenshot(page, "simulation-stopped-by-nan")


def test_the_fleet_page_shows_budget_use(live, page):
    world = orm(_guarded_run)
    sign_in(page, live, world.user.username)
    page.wait_for_selector('#connection[data-state="live"]')
    page.wait_for_selector("#budgets-card:not([hidden])")
    cells = page.locator("#budgets tbody tr td").all_text_contents()
    assert cells[0] == "operator" and cells[3] == "$1,000.00" and cells[5] == "16"
    screenshot(page, "fleet-budgets")
