from django.db.models import Prefetch
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from machines import selectors, services
from machines.filters import MachineFilter
from machines.models import Machine
from machines.permissions import FleetPermission
from machines.serializers import MachineSerializer, MachineStatusSerializer, UtilisationSerializer
from simulations.models import Simulation


class MachineViewSet(viewsets.ModelViewSet):
    """The fleet. Anyone signed in reads it; staff change it."""

    queryset = Machine.objects.prefetch_related(
        Prefetch(
            "simulations",
            queryset=Simulation.objects.filter(status__in=Simulation.ACTIVE).only("id", "machine"),
            to_attr="active_simulations",
        )
    ).order_by("name")
    serializer_class = MachineSerializer
    filterset_class = MachineFilter
    ordering_fields = ["name", "hourly_cost", "gpu_count", "memory", "status", "created_at"]
    ordering = ["name"]
    permission_classes = [IsAuthenticated, FleetPermission]
    lookup_value_regex = r"[0-9]+"

    # The response re-reads the machine: assignment ran on commit and may have made it busy.
    def perform_create(self, serializer):
        machine = services.machine_create(**serializer.validated_data)
        serializer.instance = self.get_queryset().get(pk=machine.pk)

    def perform_update(self, serializer):
        machine = services.machine_update(
            machine=serializer.instance, data=serializer.validated_data
        )
        serializer.instance = self.get_queryset().get(pk=machine.pk)

    def perform_destroy(self, instance):
        services.machine_delete(machine=instance)

    @extend_schema(request=MachineStatusSerializer, responses=MachineSerializer)
    @action(detail=True, methods=["patch"], url_path="status")
    def set_status(self, request, pk=None):
        serializer = MachineStatusSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        machine = services.machine_set_status(
            machine=self.get_object(), status=serializer.validated_data["status"]
        )
        return Response(MachineSerializer(machine).data)

    @extend_schema(responses=UtilisationSerializer)
    @action(detail=False, methods=["get"])
    def utilisation(self, request):
        return Response(UtilisationSerializer(selectors.fleet_utilisation()).data)
