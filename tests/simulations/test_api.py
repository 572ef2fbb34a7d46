"""Simulations through the HTTP API: listing, filters, ordering, CRUD, bare SQL, wait reasons."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from machines.models import Machine
from machines.services import machine_set_status
from simulations.models import Simulation
from simulations.services import simulation_finish, simulation_start
from tests.factories import agent_client, make_machine, make_simulation
from tests.simulations.helpers import assert_error, names, set_times

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


# --- list, filters, ordering ---------------------------------------------------------------------


def test_list_is_paginated_fifty_per_page_newest_first(api):
    created = [make_simulation(name=f"s{i:02d}") for i in range(53)]
    for i, simulation in enumerate(created):
        set_times(simulation, created_at=T0 + timedelta(minutes=i))
    first = api.get("/simulations/")
    assert first.status_code == 200
    body = first.json()
    assert body["count"] == 53
    assert len(body["results"]) == 50
    assert body["results"][0]["name"] == "s52"
    assert body["next"].endswith("page=2")
    assert names(api.get("/simulations", {"page": 2})) == ["s02", "s01", "s00"]


def test_default_order_breaks_created_at_ties_by_newest_id(api):
    first, second, third = (make_simulation(name=n) for n in ("a", "b", "c"))
    for simulation in (first, second, third):
        set_times(simulation, created_at=T0)
    assert names(api.get("/simulations/")) == ["c", "b", "a"]


def test_list_filters_by_status(api, user):
    make_machine()
    scheduled = make_simulation(name="placed")
    make_simulation(name="queued")
    cancelled = make_simulation(name="dropped", required_gpus=999, owner=user)
    api.post(f"/simulations/{cancelled.pk}/cancel")
    assert names(api.get("/simulations/", {"status": "pending"})) == ["queued"]
    assert names(api.get("/simulations/", {"status": "scheduled"})) == [scheduled.name]
    both = api.get("/simulations/?status=scheduled&status=cancelled&ordering=name")
    assert names(both) == ["dropped", "placed"]


def test_list_filter_with_an_unknown_status_is_400(api):
    error = assert_error(api.get("/simulations/", {"status": "paused"}), 400, "invalid")
    assert "status" in error["fields"]


def test_list_filters_by_machine(api):
    cheap = make_machine(hourly_cost=Decimal("1.00"))
    dear = make_machine(hourly_cost=Decimal("50.00"))
    make_simulation(name="on-cheap")
    make_simulation(name="on-dear")
    make_simulation(name="waiting")
    assert names(api.get("/simulations/", {"machine": cheap.pk})) == ["on-cheap"]
    assert names(api.get("/simulations/", {"machine": dear.pk})) == ["on-dear"]


def test_list_filter_with_an_unknown_machine_is_an_empty_page(api):
    # An id is a filter value like any other (the schema cannot say which ids exist): one that
    # matches nothing gives nothing. Ids that cannot be ids are 400s (test_filters.py).
    response = api.get("/simulations/", {"machine": 999999})
    assert response.status_code == 200 and response.json()["results"] == []


def test_list_filters_by_name_contains_ignoring_case(api):
    for name in ("llama-70b-pretrain", "LLaMA-7b-finetune", "mistral-sft"):
        make_simulation(name=name)
    found = names(api.get("/simulations/", {"name": "llama", "ordering": "name"}))
    assert found == ["LLaMA-7b-finetune", "llama-70b-pretrain"]


def test_list_filters_by_created_at_range(api):
    for day in range(1, 6):
        set_times(make_simulation(name=f"day-{day}"), created_at=T0 + timedelta(days=day))
    response = api.get(
        "/simulations/",
        {
            "created_after": (T0 + timedelta(days=2)).isoformat(),
            "created_before": (T0 + timedelta(days=4)).isoformat(),
        },
    )
    assert names(response) == ["day-4", "day-3", "day-2"]  # both ends included
    after = api.get("/simulations/", {"created_after": (T0 + timedelta(days=5)).isoformat()})
    assert names(after) == ["day-5"]


def test_list_with_a_malformed_date_is_400(api):
    error = assert_error(api.get("/simulations/", {"created_after": "yesterday"}), 400)
    assert "created_after" in error["fields"]


@pytest.mark.parametrize(
    ("ordering", "expected"),
    [
        ("name", ["alpha", "bravo", "charlie"]),
        ("-name", ["charlie", "bravo", "alpha"]),
        ("created_at", ["bravo", "charlie", "alpha"]),
        ("-created_at", ["alpha", "charlie", "bravo"]),
        ("updated_at", ["charlie", "alpha", "bravo"]),
        ("-updated_at", ["bravo", "alpha", "charlie"]),
        ("status", ["alpha", "charlie", "bravo"]),  # cancelled < pending < scheduled
        ("-status", ["bravo", "charlie", "alpha"]),
    ],
)
def test_list_orders_by_the_requested_field(api, user, ordering, expected):
    make_machine()
    bravo = make_simulation(name="bravo")  # scheduled on the only machine
    charlie = make_simulation(name="charlie")  # pending
    alpha = make_simulation(name="alpha", required_gpus=999, owner=user)
    api.post(f"/simulations/{alpha.pk}/cancel")
    set_times(bravo, created_at=T0, updated_at=T0 + timedelta(hours=3))
    set_times(charlie, created_at=T0 + timedelta(hours=1), updated_at=T0)
    set_times(alpha, created_at=T0 + timedelta(hours=2), updated_at=T0 + timedelta(hours=1))
    assert names(api.get("/simulations/", {"ordering": ordering})) == expected


@pytest.mark.parametrize("ordering", ["status", "-status", "name", "-created_at"])
def test_pages_of_a_list_ordered_by_a_repeated_value_neither_repeat_nor_skip(api, ordering):
    created = Simulation.objects.bulk_create(
        Simulation(name=f"same-{i % 2}", created_at=T0) for i in range(120)
    )
    seen = []
    for page in (1, 2, 3):
        response = api.get("/simulations/", {"ordering": ordering, "page": page})
        seen += [item["id"] for item in response.json()["results"]]
    assert sorted(seen) == sorted(s.pk for s in created)


def test_list_ignores_an_unknown_ordering_field(api):
    for name in ("x", "y"):
        set_times(make_simulation(name=name), created_at=T0 if name == "x" else T0 + timedelta(1))
    assert names(api.get("/simulations/", {"ordering": "owner__password"})) == ["y", "x"]


# --- create --------------------------------------------------------------------------------------


def test_create_returns_the_simulation_placed_on_a_free_machine(api, user):
    machine = make_machine(hourly_cost=Decimal("12.00"))
    response = api.post(
        "/simulations/",
        {"name": "llama", "priority": 5, "required_gpus": 2, "required_memory": 128},
        format="json",
    )
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "llama"
    assert body["owner"] == user.username
    assert body["priority"] == 5
    assert body["required_gpus"] == 2 and body["required_memory"] == 128
    assert body["status"] == "scheduled"
    assert body["machine"] == machine.pk
    assert body["machine_name"] == machine.name
    assert body["hourly_cost"] == "12.00"
    assert body["wait_reason"] is None


def test_create_without_a_free_machine_stays_pending(api):
    body = api.post("/simulations/", {"name": "lonely"}, format="json").json()
    assert body["status"] == "pending"
    assert body["machine"] is None
    assert body["scheduled_at"] is None


def test_create_accepts_machine_id_as_the_pinned_machine(api):
    make_machine(hourly_cost=Decimal("1.00"))
    pinned = make_machine(hourly_cost=Decimal("99.00"))
    response = api.post("/simulations/", {"name": "p", "machine_id": pinned.pk}, format="json")
    assert response.status_code == 201
    simulation = Simulation.objects.get(pk=response.json()["id"])
    assert simulation.pinned_machine_id == pinned.pk
    assert simulation.machine_id == pinned.pk


def test_create_with_invalid_fields_is_400_and_stores_nothing(api):
    response = api.post(
        "/simulations/",
        {"priority": 5000, "required_memory": 0, "required_gpus": -1},
        format="json",
    )
    error = assert_error(response, 400, "invalid")
    assert {"name", "priority", "required_memory", "required_gpus"} <= set(error["fields"])
    assert not Simulation.objects.exists()


def test_create_with_a_status_other_than_pending_is_400(api):
    error = assert_error(
        api.post("/simulations/", {"name": "x", "status": "running"}, format="json"), 400
    )
    assert "status" in error["fields"]


def test_create_pinned_to_an_unknown_machine_is_400(api):
    error = assert_error(
        api.post("/simulations/", {"name": "x", "pinned_machine": 999999}, format="json"), 400
    )
    assert "pinned_machine" in error["fields"]


def test_create_pinned_to_a_machine_too_small_is_409(api):
    small = make_machine(gpu_count=1)
    response = api.post(
        "/simulations/",
        {"name": "x", "pinned_machine": small.pk, "required_gpus": 4},
        format="json",
    )
    assert_error(response, 409, "pinned_machine_too_small")
    assert not Simulation.objects.exists()


def test_agents_may_not_create_simulations(transactional_db):
    machine = make_machine()
    response = agent_client(machine).post("/simulations/", {"name": "x"}, format="json")
    assert_error(response, 403)


def test_anonymous_may_not_create_simulations(anon_api):
    assert_error(anon_api.post("/simulations/", {"name": "x"}, format="json"), 401)


# --- retrieve, update, delete --------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/"])
def test_retrieve_with_and_without_trailing_slash(api, suffix):
    simulation = make_simulation(name="r")
    response = api.get(f"/simulations/{simulation.pk}{suffix}")
    assert response.status_code == 200
    assert response.json()["id"] == simulation.pk and response.json()["name"] == "r"


def test_retrieve_unknown_simulation_is_404(api):
    assert_error(api.get("/simulations/999999"), 404, "not_found")


def test_put_replaces_the_editable_fields(api, user):
    simulation = make_simulation(name="old", priority=1, required_memory=8, owner=user)
    response = api.put(
        f"/simulations/{simulation.pk}",
        {"name": "new", "priority": 7, "required_memory": 16, "required_gpus": 1},
        format="json",
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["priority"], body["required_memory"]) == ("new", 7, 16)
    simulation.refresh_from_db()
    assert (simulation.name, simulation.priority, simulation.required_gpus) == ("new", 7, 1)


def test_put_without_a_name_is_400(api, user):
    simulation = make_simulation(name="keep", owner=user)
    error = assert_error(api.put(f"/simulations/{simulation.pk}", {}, format="json"), 400)
    assert "name" in error["fields"]
    simulation.refresh_from_db()
    assert simulation.name == "keep"


def test_patch_renames_a_running_simulation(api, user):
    make_machine()
    simulation = simulation_start(simulation=make_simulation(name="before", owner=user))
    response = api.patch(f"/simulations/{simulation.pk}/", {"name": "after"}, format="json")
    assert response.status_code == 200
    assert response.json()["name"] == "after"
    assert response.json()["status"] == "running"


def test_patch_of_requirements_after_placement_is_409(api, user):
    make_machine()
    simulation = make_simulation(owner=user)
    response = api.patch(f"/simulations/{simulation.pk}", {"required_gpus": 2}, format="json")
    error = assert_error(response, 409)
    assert error["details"] == {"current_status": "scheduled"}
    simulation.refresh_from_db()
    assert simulation.required_gpus == 0


def test_patch_of_requirements_while_pending_places_it_when_it_now_fits(api, user):
    make_machine(gpu_count=8)
    simulation = make_simulation(required_gpus=16, owner=user)
    response = api.patch(f"/simulations/{simulation.pk}", {"required_gpus": 8}, format="json")
    assert response.status_code == 200
    simulation.refresh_from_db()
    assert simulation.status == "scheduled"


def test_owner_deletes_a_pending_simulation(api):
    response = api.post("/simulations/", {"name": "gone"}, format="json")
    simulation_id = response.json()["id"]
    deleted = api.delete(f"/simulations/{simulation_id}")
    assert deleted.status_code == 204
    assert not Simulation.objects.filter(pk=simulation_id).exists()
    assert_error(api.get(f"/simulations/{simulation_id}"), 404)


def test_deleting_an_active_simulation_is_409(api):
    make_machine()
    simulation_id = api.post("/simulations/", {"name": "busy"}, format="json").json()["id"]
    error = assert_error(api.delete(f"/simulations/{simulation_id}"), 409)
    assert error["details"] == {"current_status": "scheduled"}
    assert Simulation.objects.filter(pk=simulation_id).exists()


def test_someone_elses_simulation_cannot_be_deleted(api, other_user):
    simulation = make_simulation(owner=other_user)
    assert_error(api.delete(f"/simulations/{simulation.pk}"), 403)
    assert Simulation.objects.filter(pk=simulation.pk).exists()


def test_staff_deletes_anyones_finished_simulation(staff_api, user):
    make_machine()
    simulation = make_simulation(owner=user)
    simulation_finish(simulation=simulation_start(simulation=simulation))
    assert staff_api.delete(f"/simulations/{simulation.pk}").status_code == 204
    assert not Simulation.objects.filter(pk=simulation.pk).exists()


# --- detailed (bare SQL) -------------------------------------------------------------------------


def test_detailed_includes_the_machine_details(api):
    machine = make_machine(
        name="h100-x", cpu="EPYC", gpu="8x H100", memory=1024, hourly_cost=Decimal("33.30")
    )
    simulation = make_simulation(name="joined", required_gpus=8, priority=3)
    response = api.get(f"/simulations/{simulation.pk}/detailed")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == simulation.pk
    assert body["name"] == "joined"
    assert body["status"] == "scheduled"
    assert body["priority"] == 3 and body["required_gpus"] == 8
    assert body["hourly_cost"] == "33.30"
    assert body["scheduled_at"] is not None and body["finished_at"] is None
    assert body["machine"] == {
        "id": machine.pk,
        "name": "h100-x",
        "cpu": "EPYC",
        "gpu": "8x H100",
        "memory": 1024,
        "cpu_cores": 96,
        "gpu_count": 8,
        "hourly_cost": "33.30",
        "status": "busy",
    }


def test_detailed_timestamps_match_the_regular_view(api):
    make_machine()
    simulation = make_simulation()
    simulation_start(simulation=simulation)
    regular = api.get(f"/simulations/{simulation.pk}").json()
    detailed = api.get(f"/simulations/{simulation.pk}/detailed/").json()
    for key in ("created_at", "scheduled_at", "started_at", "last_heartbeat_at"):
        parsed = (
            datetime.fromisoformat(d[key].replace("Z", "+00:00")) for d in (regular, detailed)
        )
        assert next(parsed) == next(parsed), key


def test_detailed_of_a_waiting_simulation_has_a_null_machine(api):
    simulation = make_simulation(required_gpus=1)
    body = api.get(f"/simulations/{simulation.pk}/detailed").json()
    assert body["status"] == "pending"
    assert body["machine"] is None
    assert body["hourly_cost"] is None


def test_detailed_of_an_unknown_simulation_is_404(api):
    assert_error(api.get("/simulations/999999/detailed"), 404, "not_found")


# --- create-bare-sql -----------------------------------------------------------------------------


def test_create_bare_sql_pins_the_simulation_to_that_machine(api, user):
    make_machine(hourly_cost=Decimal("1.00"))
    dear = make_machine(hourly_cost=Decimal("80.00"))
    response = api.post(
        f"/simulations/{dear.pk}/create-bare-sql", {"name": "raw-insert"}, format="json"
    )
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "raw-insert"
    assert body["owner"] == user.username
    assert body["pinned_machine"] == dear.pk
    assert body["status"] == "scheduled"
    assert body["machine"] == dear.pk
    assert Simulation.objects.get(pk=body["id"]).pinned_machine_id == dear.pk


def test_create_bare_sql_waits_while_its_machine_is_busy(api):
    machine = make_machine()
    make_simulation()
    body = api.post(
        f"/simulations/{machine.pk}/create-bare-sql/", {"name": "later"}, format="json"
    ).json()
    assert body["status"] == "pending"
    assert body["wait_reason"]["code"] == "fitting_machines_busy"


def test_create_bare_sql_for_an_unknown_machine_is_404_and_stores_nothing(api):
    response = api.post("/simulations/999999/create-bare-sql", {"name": "x"}, format="json")
    error = assert_error(response, 404, "not_found")
    assert "999999" in error["message"]
    assert not Simulation.objects.exists()


def test_create_bare_sql_without_a_name_is_400(api):
    machine = make_machine()
    error = assert_error(
        api.post(f"/simulations/{machine.pk}/create-bare-sql", {}, format="json"), 400, "invalid"
    )
    assert "name" in error["fields"]
    assert not Simulation.objects.exists()


def test_create_bare_sql_stores_a_hostile_name_as_text(api):
    machine = make_machine()
    name = "x'); DROP TABLE simulations; --"
    response = api.post(f"/simulations/{machine.pk}/create-bare-sql", {"name": name}, format="json")
    assert response.status_code == 201
    assert Simulation.objects.get(pk=response.json()["id"]).name == name


# --- wait reasons --------------------------------------------------------------------------------


def wait_reason(api, simulation) -> dict | None:
    return api.get(f"/simulations/{simulation.pk}").json()["wait_reason"]


def test_wait_reason_names_the_missing_gpus(api):
    make_machine(gpu_count=8)
    simulation = make_simulation(required_gpus=16)
    reason = wait_reason(api, simulation)
    assert reason["code"] == "no_machine_fits"
    assert reason["missing"] == ["gpus"]
    assert "16 GPUs" in reason["message"] and "8" in reason["message"]


def test_wait_reason_names_the_missing_memory(api):
    make_machine(memory=512)
    simulation = make_simulation(required_memory=2048)
    reason = wait_reason(api, simulation)
    assert reason["code"] == "no_machine_fits"
    assert reason["missing"] == ["memory"]
    assert "2048 GB of memory" in reason["message"]


def test_wait_reason_names_the_missing_cpu_cores(api):
    make_machine(cpu_cores=96)
    reason = wait_reason(api, make_simulation(required_cpu_cores=128))
    assert reason["code"] == "no_machine_fits"
    assert reason["missing"] == ["cpu_cores"]


def test_wait_reason_when_no_single_machine_has_everything(api):
    make_machine(gpu_count=8, memory=64)
    make_machine(gpu_count=0, memory=1024)
    reason = wait_reason(api, make_simulation(required_gpus=8, required_memory=512))
    assert reason["code"] == "no_machine_fits"
    assert "No single machine" in reason["message"]


def test_wait_reason_with_an_empty_fleet(api):
    reason = wait_reason(api, make_simulation())
    assert reason["code"] == "no_machine_fits"


def test_wait_reason_when_every_fitting_machine_is_busy_counts_the_queue(api):
    make_machine(gpu_count=8)
    make_machine(gpu_count=0)  # free but too small
    make_simulation(required_gpus=4)
    first = make_simulation(required_gpus=4)
    second = make_simulation(required_gpus=4)
    urgent = make_simulation(required_gpus=4, priority=10)
    for simulation, ahead in ((urgent, 0), (first, 1), (second, 2)):
        reason = wait_reason(api, simulation)
        assert reason["code"] == "fitting_machines_busy"
        assert reason["fitting_machines"] == 1
        assert reason["ahead_in_queue"] == ahead
        expected = f"{ahead} simulation(s) are ahead" if ahead else "next in line"
        assert expected in reason["message"]


def test_wait_reason_when_the_pinned_machine_is_in_maintenance(api):
    make_machine(name="spare")
    pinned = make_machine(name="pinned", status=Machine.Status.MAINTENANCE)
    reason = wait_reason(api, make_simulation(pinned_machine=pinned))
    assert reason["code"] == "pinned_machine_in_maintenance"
    assert "pinned" in reason["message"]


def test_wait_reason_when_the_pinned_machine_is_busy(api):
    make_machine(name="spare")
    pinned = make_machine(name="pinned", hourly_cost=Decimal("99.00"))
    make_simulation(pinned_machine=pinned)
    reason = wait_reason(api, make_simulation(pinned_machine=pinned))
    assert reason["code"] == "fitting_machines_busy"
    assert reason["fitting_machines"] == 1


def test_a_pinned_machine_cannot_be_made_too_small_for_its_waiting_simulation(api, staff_api):
    pinned = make_machine(name="shrunk", gpu_count=8)
    make_simulation(pinned_machine=pinned)  # keeps it busy
    waiting = make_simulation(pinned_machine=pinned, required_gpus=8)
    response = staff_api.patch(f"/machines/{pinned.pk}", {"gpu_count": 2}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["details"]["simulations"] == [waiting.pk]
    body = api.get(f"/simulations/{waiting.pk}").json()
    assert body["wait_reason"]["code"] == "fitting_machines_busy"


def test_wait_reason_when_every_fitting_machine_is_in_maintenance(api):
    make_machine(status=Machine.Status.MAINTENANCE, gpu_count=8)
    make_machine(gpu_count=0)
    reason = wait_reason(api, make_simulation(required_gpus=2))
    assert reason["code"] == "fitting_machines_in_maintenance"


def test_wait_reason_is_null_once_placed_and_in_lists(api):
    machine = make_machine()
    placed = make_simulation(name="placed")
    make_simulation(name="waiting")
    assert wait_reason(api, placed) is None
    listed = {s["name"]: s["wait_reason"] for s in api.get("/simulations/").json()["results"]}
    assert listed["placed"] is None
    assert listed["waiting"]["code"] == "fitting_machines_busy"
    machine_set_status(machine=machine, status="maintenance")
    listed = {s["name"]: s["wait_reason"] for s in api.get("/simulations/").json()["results"]}
    assert listed["waiting"]["code"] == "fitting_machines_in_maintenance"


# --- progress and cost ---------------------------------------------------------------------------


def test_progress_is_empty_before_any_point(api):
    simulation = make_simulation()
    assert api.get(f"/simulations/{simulation.pk}").json()["progress"] == {
        "points": 0,
        "latest_loss": None,
        "best_loss": None,
        "last_step": None,
    }


def test_progress_follows_the_stored_points(api):
    machine = make_machine()
    simulation = simulation_start(simulation=make_simulation())
    points = [{"step": s, "loss_value": loss} for s, loss in ((1, 2.5), (2, 1.25), (3, 1.5))]
    stored = agent_client(machine).post(
        f"/convergence/{simulation.pk}/points", {"points": points}, format="json"
    )
    assert stored.status_code in (200, 201), stored.content
    expected = {"points": 3, "latest_loss": 1.5, "best_loss": 1.25, "last_step": 3}
    assert api.get(f"/simulations/{simulation.pk}").json()["progress"] == expected
    listed = api.get("/simulations/").json()["results"]
    assert listed[0]["progress"] == expected


def test_cost_is_the_hourly_cost_times_the_time_on_the_machine(api):
    make_machine(hourly_cost=Decimal("30.00"))
    simulation = simulation_finish(simulation=simulation_start(simulation=make_simulation()))
    set_times(
        simulation,
        scheduled_at=T0,
        started_at=T0 + timedelta(minutes=10),
        finished_at=T0 + timedelta(minutes=40),
    )
    body = api.get(f"/simulations/{simulation.pk}").json()
    assert body["hourly_cost"] == "30.00"
    assert body["running_seconds"] == 1800.0
    assert Decimal(body["cost"]) == Decimal("20.0000")  # 40 min on the machine at $30/h


def test_a_waiting_simulation_costs_nothing_and_has_not_run(api):
    body = api.get(f"/simulations/{make_simulation().pk}").json()
    assert body["running_seconds"] is None
    assert Decimal(body["cost"]) == 0
    assert body["hourly_cost"] is None
