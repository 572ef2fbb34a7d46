import django_filters

from simulations.models import Simulation


class SimulationFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    status = django_filters.MultipleChoiceFilter(choices=Simulation.Status.choices)
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lte")

    class Meta:
        model = Simulation
        fields = [
            "status",
            "machine",
            "pinned_machine",
            "name",
            "owner",
            "created_after",
            "created_before",
        ]
