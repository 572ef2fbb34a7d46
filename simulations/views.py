from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from simulations import selectors, services
from simulations.budgets import budget_usage
from simulations.filters import SimulationFilter
from simulations.logs import log_lines_append, log_lines_since
from simulations.models import Simulation
from simulations.permissions import (
    AgentOfSimulationMachine,
    AgentOrStaff,
    CanReadOrShipLogs,
    IsAgent,
    SimulationPermission,
    agent_machine_id,
)
from simulations.serializers import (
    BareSqlCreateSerializer,
    BudgetUsageSerializer,
    DetailedSimulationSerializer,
    FailSerializer,
    HeartbeatSerializer,
    LogAppendResultSerializer,
    LogBatchSerializer,
    LogPageSerializer,
    LogsQuerySerializer,
    SimulationCreateSerializer,
    SimulationSerializer,
    parse_log_batch,
)

AGENT_PERMISSIONS = [IsAuthenticated, AgentOfSimulationMachine]


class SimulationViewSet(viewsets.ModelViewSet):
    """Simulations: engineers create them, the scheduler places them, agents run them."""

    queryset = Simulation.objects.select_related("machine", "owner").order_by("-created_at", "-id")
    serializer_class = SimulationSerializer
    filterset_class = SimulationFilter
    ordering_fields = ["name", "created_at", "updated_at", "status", "priority", "started_at"]
    ordering = ["-created_at", "-id"]
    permission_classes = [IsAuthenticated, SimulationPermission]
    lookup_value_regex = r"[0-9]+"

    def get_serializer_class(self):
        return SimulationCreateSerializer if self.action == "create" else SimulationSerializer

    @extend_schema(responses={201: SimulationSerializer})
    def create(self, request, *args, **kwargs):
        return super().create(request, *args, **kwargs)

    def perform_create(self, serializer):
        data = {k: v for k, v in serializer.validated_data.items() if k != "status"}
        simulation = services.simulation_create(owner=self.request.user, **data)
        serializer.instance = self._current(simulation)

    def perform_update(self, serializer):
        simulation = services.simulation_update(
            simulation=serializer.instance, data=serializer.validated_data
        )
        serializer.instance = self._current(simulation)

    def _current(self, simulation):
        """As stored now: the scheduler may have placed it when the write committed."""
        return self.get_queryset().get(pk=simulation.pk)

    def perform_destroy(self, instance):
        services.simulation_delete(simulation=instance)

    def _respond(self, simulation, code=status.HTTP_200_OK):
        return Response(self.get_serializer(self._current(simulation)).data, status=code)

    @extend_schema(
        responses=DetailedSimulationSerializer, summary="A simulation with its machine (bare SQL)"
    )
    @action(detail=True, methods=["get"])
    def detailed(self, request, pk=None):
        detailed = selectors.simulation_detailed(simulation_id=int(pk))
        return Response(DetailedSimulationSerializer(detailed).data)

    @extend_schema(
        request=BareSqlCreateSerializer,
        responses={201: SimulationSerializer, 404: OpenApiResponse(description="No such machine")},
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH, description="A machine id")],
        summary="Create a simulation pinned to machine {id} with bare SQL",
    )
    @action(detail=True, methods=["post"], url_path="create-bare-sql")
    def create_bare_sql(self, request, pk=None):
        serializer = BareSqlCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        simulation_id = services.simulation_create_bare_sql(
            machine_id=int(pk), name=serializer.validated_data["name"], owner=request.user
        )
        return self._respond(Simulation(pk=simulation_id), status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=SimulationSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._respond(services.simulation_cancel(simulation=self.get_object()))

    @extend_schema(request=None, responses=SimulationSerializer, tags=["agent"])
    @action(detail=True, methods=["post"], permission_classes=AGENT_PERMISSIONS)
    def start(self, request, pk=None):
        return self._respond(services.simulation_start(simulation=self.get_object()))

    @extend_schema(request=None, responses=HeartbeatSerializer, tags=["agent"])
    @action(detail=True, methods=["post"], permission_classes=[IsAuthenticated, AgentOrStaff])
    def heartbeat(self, request, pk=None):
        """Any agent may ask; only the agent of the simulation's machine is recorded."""
        simulation = self.get_object()
        answer = services.simulation_heartbeat(
            simulation=simulation, machine_id=agent_machine_id(request.user)
        )
        simulation.refresh_from_db(fields=["status"])
        return Response({"id": simulation.pk, "status": simulation.status, **answer._asdict()})

    @extend_schema(request=None, responses=SimulationSerializer, tags=["agent"])
    @action(detail=True, methods=["post"], permission_classes=AGENT_PERMISSIONS)
    def finish(self, request, pk=None):
        return self._respond(services.simulation_finish(simulation=self.get_object()))

    @extend_schema(request=FailSerializer, responses=SimulationSerializer, tags=["agent"])
    @action(detail=True, methods=["post"], permission_classes=AGENT_PERMISSIONS)
    def fail(self, request, pk=None):
        serializer = FailSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        reason = serializer.validated_data.get("reason", "")
        return self._respond(services.simulation_fail(simulation=self.get_object(), reason=reason))

    @extend_schema(
        parameters=[LogsQuerySerializer],
        responses=LogPageSerializer,
        summary="The simulation's stdout/stderr lines after `since` (the last N are kept)",
    )
    @action(detail=True, methods=["get"], permission_classes=[IsAuthenticated, CanReadOrShipLogs])
    def logs(self, request, pk=None):
        simulation = self.get_object()
        query = LogsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        page = log_lines_since(simulation_id=simulation.pk, **query.validated_data)
        return Response(page)

    @extend_schema(
        request=LogBatchSerializer,
        responses=LogAppendResultSerializer,
        tags=["agent"],
        summary="Ship stdout/stderr lines (idempotent by seq)",
    )
    @logs.mapping.post
    def ship_logs(self, request, pk=None):
        simulation = self.get_object()
        lines = parse_log_batch(request.data)
        result = log_lines_append(simulation_id=simulation.pk, lines=lines)
        return Response({"stored": result.stored, "duplicates": result.duplicates})


class AgentViewSet(viewsets.GenericViewSet):
    """For the agent running on a machine, authenticated with the machine's agent token."""

    permission_classes = [IsAuthenticated, IsAgent]
    serializer_class = SimulationSerializer
    queryset = Simulation.objects.none()

    @extend_schema(
        request=None,
        responses={200: SimulationSerializer, 204: OpenApiResponse(description="Nothing to do")},
        tags=["agent"],
        summary="Claim the simulation reserved for my machine",
    )
    @action(detail=False, methods=["post"])
    def claim(self, request):
        simulation = services.simulation_claim(machine=request.user.agent_machine)
        if simulation is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(self.get_serializer(simulation).data)

    @extend_schema(
        responses={
            200: SimulationSerializer,
            204: OpenApiResponse(description="The machine holds no simulation"),
        },
        tags=["agent"],
        summary="The simulation my machine holds now (for an agent that restarted)",
    )
    @action(detail=False, methods=["get"])
    def current(self, request):
        simulation = selectors.machine_active_simulation(machine_id=request.user.agent_machine.pk)
        if simulation is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(self.get_serializer(simulation).data)


class BudgetViewSet(viewsets.GenericViewSet):
    """Owners' monthly budgets and GPU caps with their use this month (set in the admin)."""

    permission_classes = [IsAuthenticated]
    serializer_class = BudgetUsageSerializer
    queryset = Simulation.objects.none()
    pagination_class = None
    filter_backends = []  # its lists take no query parameters (the schema offered ?ordering)

    @extend_schema(
        responses=BudgetUsageSerializer(many=True),
        summary="Budgets and their use: all of them for staff, yours otherwise",
    )
    def list(self, request):
        user = None if request.user.is_staff else request.user
        return Response(BudgetUsageSerializer(budget_usage(user=user), many=True).data)

    @extend_schema(
        responses=BudgetUsageSerializer(many=True),
        summary="The budgets that apply to me (mine and my groups')",
    )
    @action(detail=False, methods=["get"])
    def mine(self, request):
        return Response(BudgetUsageSerializer(budget_usage(user=request.user), many=True).data)
