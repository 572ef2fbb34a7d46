"""What the dashboard pages show: reads across machines, simulations and convergence."""

from convergence.selectors import simulation_point_stats
from machines.models import Machine
from machines.selectors import fleet_utilisation
from simulations.models import Simulation
from simulations.selectors import simulation_wait_reasons

DASHBOARD_RECENT_SIMULATIONS = 100


def fleet_page_data() -> dict:
    """Machines with what each runs, the most recent simulations and the fleet's utilisation."""
    machines = list(Machine.objects.order_by("name"))
    simulations = list(
        Simulation.objects.select_related("machine", "owner").order_by("-created_at", "-id")[
            :DASHBOARD_RECENT_SIMULATIONS
        ]
    )
    running = {
        s.machine_id: s
        for s in Simulation.objects.filter(status__in=Simulation.ACTIVE).only(
            "id", "name", "status", "machine_id"
        )
    }
    stats = simulation_point_stats([s.pk for s in simulations])
    waits = simulation_wait_reasons(simulations)
    return {
        "machines": [{"machine": m, "running": running.get(m.pk)} for m in machines],
        "simulations": [
            {"simulation": s, "progress": stats.get(s.pk, {}), "wait_reason": waits.get(s.pk)}
            for s in simulations
        ],
        "utilisation": fleet_utilisation(),
        "recent_limit": DASHBOARD_RECENT_SIMULATIONS,
    }


def simulation_page_data(*, simulation: Simulation) -> dict:
    """A simulation's wait reason and the progress tiles shown before the chart loads."""
    progress = simulation_point_stats([simulation.pk]).get(simulation.pk, {})
    return {
        "wait_reason": simulation_wait_reasons([simulation]).get(simulation.pk),
        "initial": {
            "status": simulation.status,
            "machine": simulation.machine_id,
            "points": progress.get("points", 0),
            "latest_loss": progress.get("latest_loss"),
            "best_loss": progress.get("best_loss"),
            "last_step": progress.get("last_step"),
        },
    }
