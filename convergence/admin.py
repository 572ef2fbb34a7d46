from django.contrib import admin

from convergence.models import ConvergencePoint


@admin.register(ConvergencePoint)
class ConvergencePointAdmin(admin.ModelAdmin):
    """Read-only and paginated: points come from agents, and a run may hold millions."""

    list_display = ["simulation", "series", "step", "loss_value", "timestamp"]
    list_filter = [("simulation", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["simulation", "series"]
    raw_id_fields = ["simulation", "series"]
    list_per_page = 100
    show_full_result_count = False
    ordering = ["simulation", "series", "step"]
    search_fields = ["=simulation__id"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
