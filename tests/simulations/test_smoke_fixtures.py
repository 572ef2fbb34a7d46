from tests.factories import make_machine


def test_a_new_simulation_is_placed_on_the_free_machine(api):
    machine = make_machine()
    response = api.post("/simulations/", {"name": "first", "required_gpus": 1}, format="json")
    assert response.status_code == 201
    fetched = api.get(f"/simulations/{response.json()['id']}").json()
    assert fetched["status"] == "scheduled"
    assert fetched["machine"] == machine.pk
