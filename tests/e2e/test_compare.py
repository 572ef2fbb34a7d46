"""The compare page in a real browser: runs ticked on the fleet page overlaid for one metric,
a legend, zoom that re-queries, and a running run's new points arriving live."""

from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.authtoken.models import Token

from convergence.curves import LossCurve, TrainingSeries
from convergence.services import Point, points_ingest
from tests.e2e.conftest import (
    PASSWORD,
    api,
    drag_across,
    orm,
    request_queries,
    screenshot,
    sign_in,
)
from tests.factories import make_simulation, make_user

pytestmark = pytest.mark.e2e

BASE = datetime(2026, 1, 1, tzinfo=UTC)
DATASETS = """(() => Chart.getChart(document.getElementById("chart")).data.datasets
    .map((d) => ({ label: d.label, steps: d.data.map((p) => p.x) })))()"""


def _runs():
    user = make_user("comparer", password=PASSWORD)
    runs = []
    for index in range(3):
        simulation = make_simulation(name=f"sweep-lr-{index}", owner=user)
        series = TrainingSeries(LossCurve(simulation.pk, total_steps=3000), total_steps=3000)
        points = [
            Point(step, value, BASE + timedelta(seconds=step), metric)
            for step in range(3000 if index < 2 else 1500)
            for metric, value in series.values(step).items()
        ]
        for start in range(0, len(points), 9000):
            points_ingest(simulation_id=simulation.pk, points=points[start : start + 9000])
        runs.append(simulation)
    return user, runs, Token.objects.get_or_create(user=user)[0].key


def test_runs_ticked_on_the_fleet_page_are_overlaid_zoomed_and_updated_live(live, page):
    user, runs, token = orm(_runs)
    sign_in(page, live, user.username)
    for run in runs:
        page.check(f'#simulations tr[data-id="{run.pk}"] .compare-pick')
    page.click("#compare-link")
    page.wait_for_url("**/dashboard/compare?simulations=*")
    page.wait_for_function(f"{DATASETS}.length === 3")

    datasets = page.evaluate(DATASETS)
    assert sorted(d["label"] for d in datasets) == sorted(f"{r.name} (#{r.pk})" for r in runs)
    assert all(len(d["steps"]) <= 1000 for d in datasets)
    screenshot(page, "compare")

    page.fill("#from-step", "100")
    page.fill("#to-step", "199")
    page.click("#zoom-form button[type=submit]")
    page.wait_for_function(f"{DATASETS}.every((d) => d.steps[0] === 100)")
    assert all(d["steps"][-1] == 199 for d in page.evaluate(DATASETS))

    page.click("#zoom-reset")
    page.wait_for_function(f"{DATASETS}.some((d) => d.steps.at(-1) === 1499)")
    points = [{"step": s, "loss_value": 0.1} for s in range(1500, 1510)]
    api(live, token, "POST", f"/convergence/{runs[2].pk}/points", {"points": points})
    page.wait_for_function(f"{DATASETS}.some((d) => d.steps.at(-1) === 1509)")

    page.fill("#metric", "lr")
    page.click("#compare-form button[type=submit]")
    page.wait_for_url("**metric=lr*")
    page.wait_for_function(f"{DATASETS}.every((d) => d.steps.length > 0 && d.steps[1] === 10)")
    screenshot(page, "compare-lr")


def test_a_drag_across_the_chart_re_queries_every_run_for_the_dragged_steps(live, page):
    user, runs, _ = orm(_runs)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, live, user.username)
    page.goto(f"{live.url}/dashboard/compare?simulations={','.join(str(r.pk) for r in runs)}")
    page.wait_for_function(f"{DATASETS}.length === 3")
    queries = request_queries(page, "/convergence/compare")

    drag_across(page, "#chart", 500, 1400)
    page.wait_for_function("() => document.getElementById('to-step').value !== ''")
    first, last = int(page.input_value("#from-step")), int(page.input_value("#to-step"))
    assert abs(first - 500) <= 10 and abs(last - 1400) <= 10  # a pixel is a few steps wide
    page.wait_for_function(
        f"""([first, last]) => {DATASETS}.every((d) => d.steps[0] === first
            && d.steps.at(-1) === last && d.steps.length === last - first + 1)""",
        arg=[first, last],
    )
    assert len(queries) == 1
    assert (queries[0]["from_step"], queries[0]["to_step"]) == ([str(first)], [str(last)])
    screenshot(page, "compare-zoomed")

    page.click("#zoom-reset")
    page.wait_for_function(f"{DATASETS}.every((d) => d.steps[0] === 0)")
    assert len(queries) == 2 and "from_step" not in queries[1]
    assert errors == []


def test_a_run_that_does_not_exist_is_named_not_dropped(live, page):
    user, runs, _ = orm(_runs)
    sign_in(page, live, user.username)
    page.goto(f"{live.url}/dashboard/compare?simulations={runs[0].pk},987654")
    page.wait_for_selector("#error:not([hidden])")
    assert "987654" in page.text_content("#error")
