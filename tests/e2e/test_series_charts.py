"""The simulation page's other series in a real browser: one small chart per series with the
min/max band of its buckets, log scale, the step / wall-clock time x-axis, charts added live,
and the notice on charts drawn from rollups after `manage.py compact`."""

from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.authtoken.models import Token

from convergence.housekeeping import compact_points
from convergence.services import Point, points_ingest
from simulations.models import Simulation
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
STEPS = 6000  # more than the page's 2,000 points per chart: the graph is downsampled
SPIKE_STEP, SPIKE = 4321, 99.0
CHARTS = """() => [...document.querySelectorAll("canvas")]
    .map((canvas) => Chart.getChart(canvas)).filter(Boolean)
    .map((chart) => {
        const [line, , low, high] = chart.data.datasets;
        return {
            metric: line.label,
            steps: line.data.length,
            x: chart.options.scales.x.type,
            x_title: chart.options.scales.x.title.text,
            first_x: line.data.length ? line.data[0].x : null,
            last_x: line.data.length ? line.data.at(-1).x : null,
            x_min: chart.options.scales.x.min ?? null,
            x_max: chart.options.scales.x.max ?? null,
            y: chart.options.scales.y.type,
            low: low.data.map((p) => p.y),
            high: high.data.map((p) => p.y),
            line_max: Math.max(...line.data.map((p) => p.y)),
        };
    })"""
CHART_OF = f"(metric) => ({CHARTS})().find((c) => c.metric === metric)"


def _values(step: int) -> dict[str, float]:
    grad_norm = SPIKE if step == SPIKE_STEP else 1.0 + (step % 7) / 10
    return {
        "loss": 2.0 / (1 + step / 500),
        "val/loss": 2.2 / (1 + step / 600),
        "lr": 3e-4 * min(1.0, step / 500),
        "grad_norm": grad_norm,
    }


def _run(*, compacted: bool = False):
    user = make_user("watcher", password=PASSWORD)
    simulation = make_simulation(name="four-series", owner=user)
    points = [
        Point(step, value, BASE + timedelta(seconds=step), metric)
        for step in range(STEPS)
        for metric, value in _values(step).items()
    ]
    for start in range(0, len(points), 9000):
        points_ingest(simulation_id=simulation.pk, points=points[start : start + 9000])
    if compacted:
        Simulation.objects.filter(pk=simulation.pk).update(
            status="finished", finished_at=BASE + timedelta(seconds=STEPS)
        )
        compact_points(older_than=datetime.now(UTC))
    return user, simulation, Token.objects.get_or_create(user=user)[0].key


def _zoomed_to(page) -> tuple[int, int]:
    return int(page.input_value("#from-step")), int(page.input_value("#to-step"))


def _open(page, server, user, simulation) -> list[str]:
    """The page, with every chart drawn; returns the list its script errors are added to."""
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, server, user.username)
    page.goto(f"{server.url}/dashboard/simulations/{simulation.pk}")
    page.wait_for_selector('#connection[data-state="live"]')
    page.wait_for_function(f"({CHARTS})().length === 4 && ({CHARTS})().every((c) => c.steps > 0)")
    return errors


def test_every_series_of_the_run_gets_a_chart_and_a_spike_inside_a_bucket_shows_in_its_band(
    live, page
):
    user, simulation, _ = orm(_run)
    _open(page, live, user, simulation)

    charts = page.evaluate(f"({CHARTS})()")
    assert [c["metric"] for c in charts] == ["loss", "grad_norm", "lr", "val/loss"]
    assert all(c["steps"] <= 2000 for c in charts)
    grad_norm = page.evaluate(CHART_OF, "grad_norm")
    assert max(grad_norm["high"]) == SPIKE
    assert min(grad_norm["low"]) == pytest.approx(1.0)
    assert page.is_hidden("#rollups-notice")
    assert page.locator(".series-card .chart-notice:visible").count() == 0
    screenshot(page, "simulation-series")


def test_log_scale_and_the_x_axis_switch_change_the_chart_scales(live, page):
    user, simulation, _ = orm(_run)
    errors = _open(page, live, user, simulation)

    page.check('.series-card[data-metric="lr"] .series-log')
    page.check("#log-scale")
    assert page.evaluate(CHART_OF, "lr")["y"] == "logarithmic"
    assert page.evaluate(CHART_OF, "loss")["y"] == "logarithmic"
    assert page.evaluate(CHART_OF, "grad_norm")["y"] == "linear"

    page.select_option("#x-axis", "time")
    for chart in page.evaluate(f"({CHARTS})()"):
        assert (chart["x"], chart["x_title"]) == ("time", "wall-clock time")
        assert chart["first_x"] == BASE.timestamp() * 1000  # epoch milliseconds of step 0
    screenshot(page, "simulation-series-time")

    page.select_option("#x-axis", "step")
    charts = page.evaluate(f"({CHARTS})()")
    assert {(c["x"], c["first_x"]) for c in charts} == {("linear", 0)}
    assert errors == []


def test_zoom_re_queries_every_chart(live, page):
    user, simulation, _ = orm(_run)
    _open(page, live, user, simulation)

    page.fill("#from-step", "4300")
    page.fill("#to-step", "4400")
    page.click("#zoom-form button[type=submit]")
    page.wait_for_function(f"({CHARTS})().every((c) => c.first_x === 4300 && c.steps === 101)")
    assert page.evaluate(CHART_OF, "grad_norm")["line_max"] == SPIKE


def test_a_live_point_of_a_new_series_adds_a_chart(live, page):
    user, simulation, token = orm(_run)
    errors = _open(page, live, user, simulation)

    points = [{"step": STEPS, "values": {"loss": 0.1, "throughput": 1234.0}}]
    api(live, token, "POST", f"/convergence/{simulation.pk}/points", {"points": points})

    page.wait_for_function(f"({CHARTS})().length === 5")
    throughput = page.evaluate(CHART_OF, "throughput")
    assert throughput["steps"] == 1
    assert throughput["line_max"] == 1234.0
    assert errors == []


def test_a_compacted_run_says_its_charts_come_from_rollups(live, page):
    user, simulation, _ = orm(_run, compacted=True)
    _open(page, live, user, simulation)

    assert page.is_visible("#rollups-notice")
    assert page.locator(".series-card .chart-notice:visible").count() == 3
    assert "rollups" in page.text_content("#rollups-notice")
    assert max(page.evaluate(CHART_OF, "grad_norm")["high"]) == SPIKE
    screenshot(page, "simulation-rollups-only")

    page.goto(f"{live.url}/dashboard/compare?simulations={simulation.pk}&metric=grad_norm")
    page.wait_for_selector("#rollups-notice:not([hidden])")
    assert "four-series" in page.text_content("#rollups-notice")
    screenshot(page, "compare-rollups-only")


def test_a_drag_across_a_small_chart_zooms_every_chart_with_one_graph_request(live, page):
    user, simulation, _ = orm(_run)
    errors = _open(page, live, user, simulation)
    graphs = request_queries(page, "/graph")

    drag_across(page, '.series-card[data-metric="lr"] canvas', 2000, 3000)
    page.wait_for_function("() => document.getElementById('to-step').value !== ''")
    first, last = _zoomed_to(page)
    assert abs(first - 2000) <= 30 and abs(last - 3000) <= 30  # a pixel is ~20 steps wide
    page.wait_for_function(
        f"""([first, last]) => ({CHARTS})().every((c) => c.first_x === first
            && c.last_x === last && c.steps === last - first + 1)""",
        arg=[first, last],
    )
    for chart in page.evaluate(f"({CHARTS})()"):
        assert (chart["x_min"], chart["x_max"]) == (first, last)
    assert len(graphs) == 1
    assert sorted(graphs[0]["metric"][0].split(",")) == ["grad_norm", "loss", "lr", "val/loss"]
    assert (graphs[0]["from_step"], graphs[0]["to_step"]) == ([str(first)], [str(last)])
    assert f"steps {first:,}–{last:,}" in page.text_content("#chart-info")
    page.evaluate("window.scrollTo(0, 0)")  # the drag scrolled to the chart
    screenshot(page, "simulation-series-zoomed")

    page.click("#zoom-reset")
    page.wait_for_function(
        f"({CHARTS})().every((c) => c.first_x === 0 && c.x_min === null && c.steps <= 2000)"
    )
    assert len(graphs) == 2 and "from_step" not in graphs[1]
    assert page.is_disabled("#zoom-reset")
    assert errors == []


def test_a_drag_over_wall_clock_time_zooms_every_chart_to_the_steps_of_that_time(live, page):
    user, simulation, _ = orm(_run)
    errors = _open(page, live, user, simulation)
    page.select_option("#x-axis", "time")
    graphs = request_queries(page, "/graph")

    at = [(BASE + timedelta(seconds=step)).timestamp() * 1000 for step in (1000, 1500)]
    drag_across(page, '.series-card[data-metric="grad_norm"] canvas', *at)
    page.wait_for_function("() => document.getElementById('to-step').value !== ''")
    first, last = _zoomed_to(page)
    assert abs(first - 1000) <= 30 and abs(last - 1500) <= 30
    start_ms = (BASE + timedelta(seconds=first)).timestamp() * 1000
    page.wait_for_function(
        f"""([ms, count]) => ({CHARTS})().every((c) => c.x === "time" && c.first_x === ms
            && c.steps === count)""",
        arg=[start_ms, last - first + 1],
    )
    assert len(graphs) == 1
    assert len(graphs[0]["metric"][0].split(",")) == 4
    assert errors == []
