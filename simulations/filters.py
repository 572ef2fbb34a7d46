import django_filters

from simsched.filters import IntegerFilter, UtcDateTimeFilter
from simulations.models import Simulation

MAX_ID = 2**63 - 1


class SimulationFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    status = django_filters.MultipleChoiceFilter(choices=Simulation.Status.choices)
    # Ids, not choices: an id nothing has matches nothing (an empty page), as any filter does.
    machine = IntegerFilter(field_name="machine_id", min_value=1, max_value=MAX_ID)
    pinned_machine = IntegerFilter(field_name="pinned_machine_id", min_value=1, max_value=MAX_ID)
    owner = IntegerFilter(field_name="owner_id", min_value=1, max_value=MAX_ID)
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lte")

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
