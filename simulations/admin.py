from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from simsched.admin import ServiceModelAdmin
from simsched.exceptions import ApplicationError, ConflictError
from simulations import services
from simulations.budgets import BudgetBook
from simulations.guard_rules import default_guards, normalize_guards
from simulations.models import Budget, Simulation
from simulations.permissions import can_change_simulation, can_create_simulation
from simulations.selectors import simulation_wait_reasons


class SimulationAdminForm(forms.ModelForm):
    class Meta:
        model = Simulation
        fields = ["name", "owner", "priority", "required_gpus", "required_memory"]
        fields += ["required_cpu_cores", "pinned_machine", "max_duration", "guards"]
        fields += ["preemptible", "preempt_grace", "command", "env", "working_dir"]

    def clean_guards(self):
        """The same rules as the API's (a bad guard is a form error, not a server error)."""
        try:
            return normalize_guards(self.cleaned_data["guards"], defaults=default_guards())
        except ApplicationError as exc:
            raise forms.ValidationError(str(exc.fields["guards"])) from exc


@admin.register(Simulation)
class SimulationAdmin(ServiceModelAdmin):
    form = SimulationAdminForm
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
        "stopped_by",
        "points_link",
    ]
    list_filter = ["status", "stopped_by", "preemptible", "machine", "priority"]
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
        "stopped_by",
        "stop_step",
        "stop_reason",
        "saved_hours",
        "saved_cost",
        "preempt_requested_at",
        "preempted_for",
        "preemptions",
        "guard_state",
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


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    """Operators set budgets here; the scheduler starts nothing that would exceed them."""

    list_display = [
        "__str__",
        "monthly_budget",
        "spent_this_month",
        "reserved_by_running_work",
        "gpu_cap",
        "gpus_in_use",
    ]
    search_fields = ["user__username", "group__name"]
    raw_id_fields = ["user"]
    readonly_fields = [
        "spent_this_month",
        "reserved_by_running_work",
        "gpus_in_use",
        "created_at",
        "updated_at",
    ]

    def _usage(self, budget):
        book = BudgetBook()
        book._measure([budget])
        return book.usages[0]

    @admin.display(description="Spent this month (USD)")
    def spent_this_month(self, budget):
        return self._usage(budget).spent.quantize(Decimal("0.01")) if budget.pk else "—"

    @admin.display(description="Reserved by running work (USD)")
    def reserved_by_running_work(self, budget):
        return self._usage(budget).reserved.quantize(Decimal("0.01")) if budget.pk else "—"

    @admin.display(description="GPUs in use")
    def gpus_in_use(self, budget):
        return self._usage(budget).gpus if budget.pk else "—"
