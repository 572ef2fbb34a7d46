"""The server-rendered pages; each loads one script from static/js/dashboard/."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, render

from dashboard import selectors
from simulations.models import Simulation
from simulations.permissions import can_change_simulation

# The page offers a simulated run only where one can begin (the server refuses the rest).
SIMULATED_RUN_STARTS_FROM = (Simulation.Status.PENDING, Simulation.Status.SCHEDULED)


@login_required
def dashboard(request):
    """The fleet page: machines, utilisation and recent simulations, live over /ws/fleet."""
    return render(request, "dashboard/fleet.html", selectors.fleet_page_data())


@login_required
def simulation_page(request, simulation_id: int):
    """One simulation's live loss curve; the chart's history comes from the graph endpoint."""
    simulation = get_object_or_404(
        Simulation.objects.select_related("machine", "owner"), pk=simulation_id
    )
    context = {
        "simulation": simulation,
        "can_control": can_change_simulation(request.user, simulation),
        "is_final": simulation.is_final,
        "can_start": simulation.status in SIMULATED_RUN_STARTS_FROM,
        # "initial" is read by the page's script (json_script).
        **selectors.simulation_page_data(simulation=simulation),
    }
    return render(request, "dashboard/simulation.html", context)


@login_required
def compare_page(request):
    """One metric of several runs overlaid (`?simulations=1,2,3&metric=loss`); the chart's data
    comes from /convergence/compare, which refuses runs the caller may not read."""
    ids = request.GET.get("simulations", "")
    context = {
        "simulation_ids": ",".join(part for part in ids.split(",") if part.strip().isdigit()),
        "metric": request.GET.get("metric", "loss")[:100],
    }
    return render(request, "dashboard/compare.html", context)
