"""The filter backends every API list uses (set once in settings)."""

from rest_framework.filters import OrderingFilter


class StableOrderingFilter(OrderingFilter):
    """`?ordering=` by a field with repeated values (status, name) ends with the primary key,
    so pages neither repeat nor skip rows: SQL gives ties no order of their own."""

    def get_ordering(self, request, queryset, view):
        ordering = super().get_ordering(request, queryset, view)
        if ordering and not any(field.lstrip("-") in ("pk", "id") for field in ordering):
            ordering = [*ordering, "pk"]
        return ordering
