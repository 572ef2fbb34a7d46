from django.contrib import admin, messages
from django.db import transaction

from machines import services
from machines.models import Machine
from machines.permissions import can_change_fleet
from simsched.admin import ServiceModelAdmin
from simulations.models import Simulation


@admin.register(Machine)
class MachineAdmin(ServiceModelAdmin):
    list_display = [
        "name",
        "status",
        "gpu",
        "gpu_count",
        "cpu_cores",
        "memory",
        "hourly_cost",
        "current_simulation",
    ]
    list_filter = ["status", "gpu_count"]
    search_fields = ["name", "cpu", "gpu"]
    ordering = ["name"]
    readonly_fields = ["status", "agent_user", "created_at", "updated_at"]
    actions = ["put_into_maintenance", "make_available"]

    def has_add_permission(self, request):
        return can_change_fleet(request.user) and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        return can_change_fleet(request.user) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return can_change_fleet(request.user) and super().has_delete_permission(request, obj)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("simulations")

    @admin.display(description="Running")
    def current_simulation(self, machine):
        active = [s for s in machine.simulations.all() if s.status in Simulation.ACTIVE]
        return active[0].name if active else "—"

    def save_model(self, request, obj, form, change):
        if change:
            data = {field: form.cleaned_data[field] for field in form.changed_data}
            services.machine_update(machine=obj, data=data)
        else:
            fields = {f: form.cleaned_data[f] for f in form.cleaned_data}
            obj.pk = services.machine_create(**fields).pk

    def delete_with_service(self, obj):
        services.machine_delete(machine=obj)  # its agent account and token go with it

    @transaction.atomic
    def _set_status(self, request, queryset, status):
        for machine in queryset:
            services.machine_set_status(machine=machine, status=status)
        self.message_user(
            request, f"{queryset.count()} machine(s) set to {status}.", messages.SUCCESS
        )

    @admin.action(description="Put into maintenance (busy machines drain)")
    def put_into_maintenance(self, request, queryset):
        self._set_status(request, queryset, Machine.Status.MAINTENANCE)

    @admin.action(description="Make available")
    def make_available(self, request, queryset):
        self._set_status(request, queryset, Machine.Status.AVAILABLE)
