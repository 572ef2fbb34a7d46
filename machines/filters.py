import django_filters

from machines.models import Machine
from simsched.filters import IntegerFilter


class MachineFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    min_gpus = IntegerFilter(field_name="gpu_count", lookup_expr="gte")
    min_memory = IntegerFilter(field_name="memory", lookup_expr="gte")

    class Meta:
        model = Machine
        fields = ["status", "name", "min_gpus", "min_memory"]
