from decimal import Decimal

from django.db.models import Count, Q, Sum

from machines.models import Machine


def fleet_utilisation() -> dict:
    """How much of the fleet is working, and what it costs per hour."""
    totals = Machine.objects.aggregate(
        machines=Count("id"),
        available=Count("id", filter=Q(status=Machine.Status.AVAILABLE)),
        busy=Count("id", filter=Q(status=Machine.Status.BUSY)),
        maintenance=Count("id", filter=Q(status=Machine.Status.MAINTENANCE)),
        busy_hourly_cost=Sum("hourly_cost", filter=Q(status=Machine.Status.BUSY)),
        idle_hourly_cost=Sum("hourly_cost", filter=Q(status=Machine.Status.AVAILABLE)),
        gpus=Sum("gpu_count"),
        busy_gpus=Sum("gpu_count", filter=Q(status=Machine.Status.BUSY)),
    )
    in_service = totals["available"] + totals["busy"]
    return {
        **{key: totals[key] for key in ("machines", "available", "busy", "maintenance")},
        "utilisation": round(totals["busy"] / in_service, 4) if in_service else 0.0,
        "gpu_utilisation": round((totals["busy_gpus"] or 0) / totals["gpus"], 4)
        if totals["gpus"]
        else 0.0,
        "busy_hourly_cost": str(totals["busy_hourly_cost"] or Decimal("0.00")),
        "idle_hourly_cost": str(totals["idle_hourly_cost"] or Decimal("0.00")),
    }
