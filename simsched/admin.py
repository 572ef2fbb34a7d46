"""The admin goes through the services, like the API: a refusal is an error message, not a 500."""

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpResponseRedirect

from simsched.exceptions import ApplicationError


def refusal_message(exc: Exception) -> str:
    if isinstance(exc, ApplicationError):
        return exc.message
    return "; ".join(exc.messages)


class ServiceModelAdmin(admin.ModelAdmin):
    """Save, delete, bulk delete and actions call `delete_with_service` and the subclass's
    services; whatever a service refuses is rolled back and shown as an error message on the
    page the operator came from."""

    REFUSED = (ApplicationError, ValidationError)

    def delete_with_service(self, obj) -> None:
        raise NotImplementedError

    def _refused(self, request, exc: Exception) -> HttpResponseRedirect:
        self.message_user(request, refusal_message(exc), messages.ERROR)
        return HttpResponseRedirect(request.get_full_path())

    def changeform_view(self, request, *args, **kwargs):
        try:
            return super().changeform_view(request, *args, **kwargs)
        except self.REFUSED as exc:
            return self._refused(request, exc)

    def delete_view(self, request, *args, **kwargs):
        try:
            return super().delete_view(request, *args, **kwargs)
        except self.REFUSED as exc:
            return self._refused(request, exc)

    def response_action(self, request, queryset):
        try:
            return super().response_action(request, queryset)
        except self.REFUSED as exc:
            return self._refused(request, exc)

    def delete_model(self, request, obj):
        self.delete_with_service(obj)

    @transaction.atomic
    def delete_queryset(self, request, queryset):
        """ "Delete selected": all or nothing, each through the service."""
        for obj in queryset:
            self.delete_with_service(obj)
