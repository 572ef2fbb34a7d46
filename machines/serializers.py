from rest_framework import serializers

from machines.models import Machine
from simsched.serializers import StrictModelSerializer

SETTABLE_STATUSES = [Machine.Status.AVAILABLE, Machine.Status.MAINTENANCE]


class MachineStatusField(serializers.ChoiceField):
    """Any status reads back; a request sets available or maintenance. `busy` still reaches
    the service, which refuses it with the reason."""

    def __init__(self, **kwargs):
        kwargs.setdefault(
            "help_text",
            "available or maintenance, as PATCH /machines/{id}/status (busy is the scheduler's).",
        )
        super().__init__(choices=Machine.Status.choices, **kwargs)

    def openapi_schema(self, map_child, direction):
        if direction != "request":
            return None
        return {
            "type": "string",
            "enum": [s.value for s in SETTABLE_STATUSES],
            "description": self.help_text,
        }


class MachineSerializer(StrictModelSerializer):
    current_simulation = serializers.SerializerMethodField()
    status = MachineStatusField(required=False)

    class Meta:
        model = Machine
        fields = [
            "id",
            "name",
            "cpu",
            "gpu",
            "memory",
            "cpu_cores",
            "gpu_count",
            "hourly_cost",
            "status",
            "current_simulation",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = {
            "memory": {"min_value": 1, "max_value": 1_000_000},
            "cpu_cores": {"min_value": 1, "max_value": 100_000},
            "gpu_count": {"min_value": 0, "max_value": 1024},
            "hourly_cost": {"min_value": 0},
        }

    def get_current_simulation(self, machine) -> int | None:
        active = getattr(machine, "active_simulations", None)  # prefetched by list views
        if active is not None:
            return active[0].pk if active else None
        from simulations.models import Simulation

        return (
            Simulation.objects.filter(machine=machine, status__in=Simulation.ACTIVE)
            .values_list("id", flat=True)
            .first()
        )


class MachineStatusSerializer(serializers.Serializer):
    status = MachineStatusField()


class UtilisationSerializer(serializers.Serializer):
    machines = serializers.IntegerField()
    available = serializers.IntegerField()
    busy = serializers.IntegerField()
    maintenance = serializers.IntegerField()
    utilisation = serializers.FloatField(help_text="Busy share of machines not in maintenance.")
    gpu_utilisation = serializers.FloatField()
    # Sums over the fleet: no digit cap (a cap turned a large fleet's total into a 500).
    busy_hourly_cost = serializers.DecimalField(max_digits=None, decimal_places=2)
    idle_hourly_cost = serializers.DecimalField(max_digits=None, decimal_places=2)
