"""What the convergence reads share: limits, and the simulation and series lookups."""

from convergence.models import ROLLUP_LEVELS
from simsched.exceptions import NotFoundError
from simulations.models import Simulation

TOP_LEVEL = ROLLUP_LEVELS[-1]
GRAPH_DEFAULT_POINTS = 1000
GRAPH_MAX_POINTS = 10_000
GRAPH_MIN_POINTS = 8
STREAM_MAX_POINTS = 10_000

ERR_SIMULATION_NOT_FOUND = "Simulation {simulation_id} does not exist."


def simulation_status(simulation_id: int) -> str:
    status = Simulation.objects.filter(pk=simulation_id).values_list("status", flat=True).first()
    if status is None:
        raise NotFoundError(ERR_SIMULATION_NOT_FOUND.format(simulation_id=simulation_id))
    return status
