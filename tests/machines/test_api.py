"""The fleet through the HTTP API: reads for everyone signed in, changes for staff."""

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from machines.models import Machine
from machines.services import machine_set_status
from simulations.models import Simulation
from simulations.services import simulation_finish, simulation_start
from tests.factories import agent_client, make_machine, make_simulation
from tests.helpers import assert_error


def machine_payload(**fields) -> dict:
    return {
        "name": "gpu-box",
        "cpu": "AMD EPYC 9654",
        "gpu": "8x NVIDIA H100",
        "memory": 512,
        "cpu_cores": 96,
        "gpu_count": 8,
        "hourly_cost": "30.00",
        **fields,
    }


# --- list ----------------------------------------------------------------------------------------


def test_list_is_paginated_fifty_per_page(api):
    for i in range(52):
        make_machine(name=f"m-{i:03d}")
    first = api.get("/machines/")
    assert first.status_code == 200
    body = first.json()
    assert body["count"] == 52
    assert len(body["results"]) == 50
    assert body["previous"] is None and body["next"].endswith("page=2")
    second = api.get("/machines/", {"page": 2}).json()
    assert [m["name"] for m in second["results"]] == ["m-050", "m-051"]


def test_list_page_past_the_end_is_404_in_the_error_shape(api):
    make_machine()
    assert_error(api.get("/machines/", {"page": 9}), 404, "not_found")


def test_list_is_ordered_by_name_by_default(api):
    for name in ("charlie", "alpha", "bravo"):
        make_machine(name=name)
    names = [m["name"] for m in api.get("/machines/").json()["results"]]
    assert names == ["alpha", "bravo", "charlie"]


def test_list_orders_by_a_requested_field(api):
    make_machine(name="mid", hourly_cost=Decimal("20.00"))
    make_machine(name="cheap", hourly_cost=Decimal("5.00"))
    make_machine(name="dear", hourly_cost=Decimal("90.00"))
    by_cost = api.get("/machines/", {"ordering": "-hourly_cost"}).json()["results"]
    assert [m["name"] for m in by_cost] == ["dear", "mid", "cheap"]
    by_cost = api.get("/machines/", {"ordering": "hourly_cost"}).json()["results"]
    assert [m["name"] for m in by_cost] == ["cheap", "mid", "dear"]


def test_list_filters_by_status(api):
    make_machine(name="free")
    make_machine(name="down", status=Machine.Status.MAINTENANCE)
    busy = make_machine(name="working")
    make_simulation(pinned_machine=busy)
    for status, expected in (("available", "free"), ("maintenance", "down"), ("busy", "working")):
        results = api.get("/machines/", {"status": status}).json()["results"]
        assert [m["name"] for m in results] == [expected]


def test_list_filter_with_an_unknown_status_is_400(api):
    error = assert_error(api.get("/machines/", {"status": "asleep"}), 400, "invalid")
    assert "status" in error["fields"]


def test_list_filters_by_capacity_and_name(api):
    make_machine(name="small-cpu", gpu_count=0, memory=64)
    make_machine(name="big-gpu", gpu_count=8, memory=1024)
    assert [m["name"] for m in api.get("/machines/", {"min_gpus": 1}).json()["results"]] == [
        "big-gpu"
    ]
    results = api.get("/machines/", {"min_memory": 100}).json()["results"]
    assert [m["name"] for m in results] == ["big-gpu"]
    assert [m["name"] for m in api.get("/machines/", {"name": "CPU"}).json()["results"]] == [
        "small-cpu"
    ]


def test_list_needs_authentication(anon_api):
    assert_error(anon_api.get("/machines/"), 401, "not_authenticated")


# --- retrieve ------------------------------------------------------------------------------------


def test_retrieve_returns_the_machine_and_its_current_simulation(api):
    machine = make_machine(name="h100-a", hourly_cost=Decimal("42.50"))
    simulation = make_simulation(pinned_machine=machine)
    body = api.get(f"/machines/{machine.pk}").json()
    assert body["id"] == machine.pk
    assert body["name"] == "h100-a"
    assert body["hourly_cost"] == "42.50"
    assert body["status"] == "busy"
    assert body["current_simulation"] == simulation.pk
    assert body["memory"] == 512 and body["cpu_cores"] == 96 and body["gpu_count"] == 8


def test_retrieve_a_free_machine_has_no_current_simulation(api):
    machine = make_machine()
    body = api.get(f"/machines/{machine.pk}/").json()
    assert body["status"] == "available"
    assert body["current_simulation"] is None


def test_unknown_machine_is_404_in_the_error_shape(api):
    assert_error(api.get("/machines/999999"), 404, "not_found")
    assert_error(api.get("/machines/999999/"), 404, "not_found")


@pytest.mark.parametrize("path", ["/machines", "/machines/"])
def test_list_answers_with_and_without_trailing_slash(api, path):
    make_machine(name="only")
    response = api.get(path)
    assert response.status_code == 200
    assert [m["name"] for m in response.json()["results"]] == ["only"]


@pytest.mark.parametrize("suffix", ["", "/"])
def test_detail_routes_answer_with_and_without_trailing_slash(staff_api, suffix):
    machine = make_machine()
    assert staff_api.get(f"/machines/{machine.pk}{suffix}").json()["id"] == machine.pk
    response = staff_api.patch(
        f"/machines/{machine.pk}/status{suffix}", {"status": "maintenance"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["status"] == "maintenance"
    assert staff_api.get(f"/machines/utilisation{suffix}").json()["maintenance"] == 1


# --- create --------------------------------------------------------------------------------------


def test_staff_creates_a_machine(staff_api):
    response = staff_api.post("/machines/", machine_payload(), format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "gpu-box"
    assert body["status"] == "available"
    assert body["hourly_cost"] == "30.00"
    assert Machine.objects.filter(pk=body["id"], gpu_count=8).exists()


def test_a_new_machine_takes_waiting_work_at_once(staff_api):
    waiting = make_simulation(required_gpus=4)
    body = staff_api.post("/machines/", machine_payload(), format="json").json()
    assert body["status"] == "busy"
    assert body["current_simulation"] == waiting.pk


def test_busy_given_on_create_is_refused(staff_api):
    response = staff_api.post("/machines/", machine_payload(status="busy"), format="json")
    assert "status" in assert_error(response, 400, "invalid")["fields"]
    assert not Machine.objects.exists()


def test_a_machine_created_in_maintenance_takes_no_work(staff_api):
    waiting = make_simulation()
    response = staff_api.post("/machines/", machine_payload(status="maintenance"), format="json")
    assert response.status_code == 201
    assert response.json()["status"] == "maintenance"
    waiting.refresh_from_db()
    assert waiting.machine_id is None


def test_patch_with_a_status_drains_a_busy_machine_as_the_status_endpoint_does(staff_api):
    machine = make_machine()
    simulation = make_simulation()
    response = staff_api.patch(
        f"/machines/{machine.pk}", {"status": "maintenance", "hourly_cost": "5.00"}, format="json"
    )
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["hourly_cost"]) == ("maintenance", "5.00")
    simulation.refresh_from_db()
    assert simulation.machine_id == machine.pk  # it keeps its simulation


def test_patch_back_to_available_keeps_a_busy_machine_busy(staff_api):
    machine = make_machine()
    make_simulation()
    staff_api.patch(f"/machines/{machine.pk}", {"status": "maintenance"}, format="json")
    response = staff_api.patch(f"/machines/{machine.pk}", {"status": "available"}, format="json")
    assert response.json()["status"] == "busy"


def test_patch_to_busy_is_refused_and_changes_nothing(staff_api):
    machine = make_machine()
    response = staff_api.patch(
        f"/machines/{machine.pk}", {"status": "busy", "hourly_cost": "5.00"}, format="json"
    )
    assert "status" in assert_error(response, 400, "invalid")["fields"]
    machine.refresh_from_db()
    assert (machine.status, str(machine.hourly_cost)) == ("available", "30.00")


def test_engineer_may_not_create_a_machine(api):
    assert_error(api.post("/machines/", machine_payload(), format="json"), 403)
    assert not Machine.objects.exists()


def test_create_with_invalid_fields_is_400_with_the_fields(staff_api):
    response = staff_api.post(
        "/machines/", machine_payload(memory=0, gpu_count=-1, name=""), format="json"
    )
    error = assert_error(response, 400, "invalid")
    assert {"memory", "gpu_count", "name"} <= set(error["fields"])
    assert not Machine.objects.exists()


def test_create_with_a_taken_name_is_400(staff_api):
    make_machine(name="gpu-box")
    error = assert_error(staff_api.post("/machines/", machine_payload(), format="json"), 400)
    assert "name" in error["fields"]


# --- status --------------------------------------------------------------------------------------


def test_staff_puts_a_machine_into_maintenance_and_back(staff_api):
    machine = make_machine()
    url = f"/machines/{machine.pk}/status"
    response = staff_api.patch(url, {"status": "maintenance"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "maintenance"
    response = staff_api.patch(url, {"status": "available"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "available"
    machine.refresh_from_db()
    assert machine.status == "available"


def test_setting_busy_by_hand_is_400(staff_api):
    machine = make_machine()
    response = staff_api.patch(f"/machines/{machine.pk}/status", {"status": "busy"}, format="json")
    error = assert_error(response, 400, "invalid")
    assert "status" in error["fields"]
    machine.refresh_from_db()
    assert machine.status == "available"


def test_an_unknown_status_is_400_with_the_field(staff_api):
    machine = make_machine()
    response = staff_api.patch(
        f"/machines/{machine.pk}/status", {"status": "asleep"}, format="json"
    )
    error = assert_error(response, 400, "invalid")
    assert list(error["fields"]) == ["status"]


def test_a_missing_status_is_400_with_the_field(staff_api):
    machine = make_machine()
    error = assert_error(staff_api.patch(f"/machines/{machine.pk}/status", {}, format="json"), 400)
    assert "status" in error["fields"]


def test_engineer_may_not_change_a_machines_status(api):
    machine = make_machine()
    response = api.patch(f"/machines/{machine.pk}/status", {"status": "maintenance"}, format="json")
    assert_error(response, 403)
    machine.refresh_from_db()
    assert machine.status == "available"


def test_status_of_an_unknown_machine_is_404(staff_api):
    response = staff_api.patch("/machines/999999/status", {"status": "available"}, format="json")
    assert_error(response, 404, "not_found")


def test_a_busy_machine_set_available_stays_busy_while_its_simulation_runs(staff_api):
    machine = make_machine()
    make_simulation()
    machine_set_status(machine=machine, status="maintenance")
    response = staff_api.patch(
        f"/machines/{machine.pk}/status", {"status": "available"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["status"] == "busy"


# --- update --------------------------------------------------------------------------------------


def test_staff_updates_a_machines_capacity(staff_api):
    machine = make_machine(gpu_count=0)
    waiting = make_simulation(required_gpus=2)
    response = staff_api.patch(f"/machines/{machine.pk}", {"gpu_count": 4}, format="json")
    assert response.status_code == 200
    assert response.json()["gpu_count"] == 4
    assert response.json()["status"] == "busy"
    assert response.json()["current_simulation"] == waiting.pk
    waiting.refresh_from_db()
    assert waiting.status == "scheduled" and waiting.machine_id == machine.pk


# --- delete --------------------------------------------------------------------------------------


def test_deleting_a_free_machine_is_204(staff_api):
    machine = make_machine()
    response = staff_api.delete(f"/machines/{machine.pk}")
    assert response.status_code == 204
    assert response.content == b""
    assert not Machine.objects.filter(pk=machine.pk).exists()


def test_deleting_a_machine_retires_its_agent_token(staff_api):
    machine = make_machine()
    agent = agent_client(machine)
    agent_user_id = Machine.objects.get(pk=machine.pk).agent_user_id
    assert staff_api.delete(f"/machines/{machine.pk}").status_code == 204
    assert_error(agent.post("/simulations/", {"name": "ghost"}, format="json"), 401)
    assert_error(agent.post("/agent/claim"), 401)
    assert not get_user_model().objects.filter(pk=agent_user_id).exists()
    assert not Simulation.objects.exists()


def test_a_machine_that_cannot_be_deleted_keeps_its_agent(staff_api):
    machine = make_machine()
    agent = agent_client(machine)
    make_simulation()
    assert_error(staff_api.delete(f"/machines/{machine.pk}"), 409, "machine_in_use")
    assert agent.post("/agent/claim").status_code == 200


def test_deleting_a_machine_with_a_running_simulation_is_409_and_deletes_nothing(staff_api):
    machine = make_machine(name="in-use")
    simulation = make_simulation()
    response = staff_api.delete(f"/machines/{machine.pk}/")
    error = assert_error(response, 409, "machine_in_use")
    assert "in-use" in error["message"]
    assert Machine.objects.filter(pk=machine.pk, status="busy").exists()
    assert Simulation.objects.filter(pk=simulation.pk, machine=machine).exists()


def test_deleting_a_machine_with_only_finished_simulations_is_409(staff_api):
    machine = make_machine()
    simulation = make_simulation()
    simulation_finish(simulation=simulation_start(simulation=simulation))
    assert_error(staff_api.delete(f"/machines/{machine.pk}"), 409, "machine_in_use")
    assert Machine.objects.filter(pk=machine.pk).exists()
    assert Simulation.objects.filter(pk=simulation.pk).exists()


def test_deleting_a_machine_a_simulation_is_pinned_to_is_409(staff_api):
    machine = make_machine(status=Machine.Status.MAINTENANCE)
    simulation = make_simulation(pinned_machine=machine)
    assert_error(staff_api.delete(f"/machines/{machine.pk}"), 409, "machine_in_use")
    assert Machine.objects.filter(pk=machine.pk).exists()
    assert Simulation.objects.get(pk=simulation.pk).pinned_machine_id == machine.pk


def test_engineer_may_not_delete_a_machine(api):
    machine = make_machine()
    assert_error(api.delete(f"/machines/{machine.pk}"), 403)
    assert Machine.objects.filter(pk=machine.pk).exists()


def test_deleting_an_unknown_machine_is_404(staff_api):
    assert_error(staff_api.delete("/machines/999999"), 404, "not_found")


# --- utilisation ---------------------------------------------------------------------------------


def test_utilisation_of_an_empty_fleet_is_zero(api):
    body = api.get("/machines/utilisation").json()
    assert body == {
        "machines": 0,
        "available": 0,
        "busy": 0,
        "maintenance": 0,
        "utilisation": 0.0,
        "gpu_utilisation": 0.0,
        "busy_hourly_cost": "0.00",
        "idle_hourly_cost": "0.00",
    }


def test_utilisation_counts_machines_gpus_and_cost(api):
    working = make_machine(gpu_count=8, hourly_cost=Decimal("30.00"))
    make_machine(gpu_count=4, hourly_cost=Decimal("12.50"), memory=256)  # idle
    make_machine(gpu_count=0, hourly_cost=Decimal("1.25"), memory=64)  # idle
    make_machine(gpu_count=4, hourly_cost=Decimal("99.00"), status=Machine.Status.MAINTENANCE)
    make_simulation(pinned_machine=working)
    response = api.get("/machines/utilisation/")
    assert response.status_code == 200
    assert response.json() == {
        "machines": 4,
        "available": 2,
        "busy": 1,
        "maintenance": 1,
        "utilisation": round(1 / 3, 4),  # busy share of the machines in service
        "gpu_utilisation": round(8 / 16, 4),
        "busy_hourly_cost": "30.00",
        "idle_hourly_cost": "13.75",
    }


def test_a_machine_cannot_shrink_below_what_its_simulations_need(staff_api):
    machine = make_machine(gpu_count=8, memory=512)
    running = make_simulation(required_gpus=4)
    response = staff_api.patch(f"/machines/{machine.pk}", {"gpu_count": 2}, format="json")
    assert response.status_code == 409
    body = response.json()["error"]
    assert body["code"] == "machine_too_small"
    assert body["details"]["simulations"] == [running.pk]
    machine.refresh_from_db()
    assert machine.gpu_count == 8
    assert (
        staff_api.patch(f"/machines/{machine.pk}", {"gpu_count": 4}, format="json").status_code
        == 200
    )
