from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from simsched.admin import ServiceModelAdmin
from simsched.exceptions import ConflictError
from simulations import services
from simulations.models import Simulation
from simulations.permissions import can_change_simulation, can_create_simulation
from simulations.selectors import simulation_wait_reasons


@admin.register(Simulation)
class SimulationAdmin(ServiceModelAdmin):
    list_display = [
        "name",
        "status",
        "priority",
        "machine",
        "owner",
        "waiting_because",
        "created_at",
        "started_at",
        "finished_at",
        "cost_display",
        "points_link",
    ]
    list_filter = ["status", "machine", "priority"]
    search_fields = ["name", "owner__username", "machine__name"]
    list_select_related = ["machine", "owner"]
    date_hierarchy = "created_at"
    raw_id_fields = ["owner"]
    ordering = ["-created_at"]
    readonly_fields = [
        "status",
        "machine",
        "hourly_cost",
        "accrued_cost",
        "attempts",
        "failure_reason",
        "created_at",
        "updated_at",
        "scheduled_at",
        "started_at",
        "finished_at",
        "last_heartbeat_at",
        "waiting_because",
        "cost_display",
    ]
    actions = ["cancel_simulations"]

    def has_add_permission(self, request):
        return can_create_simulation(request.user) and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        allowed = obj is None or can_change_simulation(request.user, obj)
        return allowed and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        allowed = obj is None or can_change_simulation(request.user, obj)
        return allowed and super().has_delete_permission(request, obj)

    @admin.display(description="Waiting because")
    def waiting_because(self, simulation):
        if simulation.status != Simulation.Status.PENDING:
            return "—"
        reason = simulation_wait_reasons([simulation]).get(simulation.pk)
        return reason["message"] if reason else "—"

    @admin.display(description="Cost (USD)")
    def cost_display(self, simulation):
        return simulation.cost

    @admin.display(description="Points")
    def points_link(self, simulation):
        url = reverse("admin:convergence_convergencepoint_changelist")
        return format_html('<a href="{}?simulation__id__exact={}">points</a>', url, simulation.pk)

    def save_model(self, request, obj, form, change):
        if change:
            data = {field: form.cleaned_data[field] for field in form.changed_data}
            services.simulation_update(simulation=obj, data=data)
        else:
            fields = {
                f: form.cleaned_data[f] for f in services.EDITABLE_FIELDS if f in form.cleaned_data
            }
            fields["owner"] = fields.get("owner") or request.user
            obj.pk = services.simulation_create(**fields).pk

    def delete_with_service(self, obj):
        services.simulation_delete(simulation=obj)  # refused while it holds a machine

    @admin.action(description="Cancel (frees the machine)")
    def cancel_simulations(self, request, queryset):
        cancelled = 0
        for simulation in queryset:
            try:
                services.simulation_cancel(simulation=simulation)
                cancelled += 1
            except ConflictError:
                pass  # already final
        self.message_user(request, f"Cancelled {cancelled} simulation(s).", messages.SUCCESS)
