"""The single DRF router every app registers its viewsets on."""

from rest_framework.routers import DefaultRouter

from convergence.views import ConvergenceViewSet
from machines.views import MachineViewSet
from simulations.views import AgentViewSet, BudgetViewSet, SimulationViewSet


class OptionalSlashRouter(DefaultRouter):
    """Every route answers with and without the trailing slash."""

    def __init__(self):
        super().__init__()
        self.trailing_slash = "/?"


router = OptionalSlashRouter()
router.register("machines", MachineViewSet, basename="machine")
router.register("simulations", SimulationViewSet, basename="simulation")
router.register("convergence", ConvergenceViewSet, basename="convergence")
router.register("agent", AgentViewSet, basename="agent")
router.register("budgets", BudgetViewSet, basename="budget")

urlpatterns = router.urls
