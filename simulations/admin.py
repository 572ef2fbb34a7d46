from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from simsched.exceptions import ConflictError
from simulations import services
from simulations.models import Simulation
from simulations.selectors import simulation_wait_reasons


@admin.register(Simulation)
class SimulationAdmin(admin.ModelAdmin):
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
            obj.pk = services.simulation_create(owner=request.user, **fields).pk

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
