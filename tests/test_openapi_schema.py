"""The OpenAPI schema states the input rules the API enforces (the fuzz test checks that the
two agree; these pin each class of rule by name)."""

import pytest

SCHEMA_URL = "/schema?format=json"


@pytest.fixture(scope="module")
def schema(django_db_blocker):
    from rest_framework.test import APIClient

    with django_db_blocker.unblock():
        return APIClient().get(SCHEMA_URL).json()


def _component(schema, name):
    return schema["components"]["schemas"][name]


def _parameter(schema, path, method, name):
    (found,) = [p for p in schema["paths"][path][method]["parameters"] if p["name"] == name]
    return found


def test_path_ids_are_positive_64_bit_integers(schema):
    for path, item in schema["paths"].items():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert parameter["schema"] == {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 2**63 - 1,
                    }, path


def test_integer_filters_are_integers_with_bounds(schema):
    min_memory = _parameter(schema, "/machines/", "get", "min_memory")["schema"]
    assert min_memory == {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
    owner = _parameter(schema, "/simulations/", "get", "owner")["schema"]
    assert (owner["type"], owner["minimum"]) == ("integer", 1)


def test_optional_query_parameters_may_be_sent_empty_and_required_ones_not(schema):
    assert _parameter(schema, "/machines/", "get", "min_gpus")["allowEmptyValue"] is True
    simulations = _parameter(schema, "/convergence/compare/", "get", "simulations")
    assert simulations["required"] is True and "allowEmptyValue" not in simulations


def test_lists_in_query_strings_are_comma_separated_arrays(schema):
    simulations = _parameter(schema, "/convergence/compare/", "get", "simulations")
    assert (simulations["style"], simulations["explode"]) == ("form", False)
    assert simulations["schema"]["items"]["minimum"] == 1
    assert simulations["schema"]["maxItems"] == 20
    metric = _parameter(schema, "/convergence/{simulation_id}/graph/", "get", "metric")
    assert metric["explode"] is False and metric["schema"]["default"] == ["loss"]


def test_the_status_action_requires_its_status_though_it_is_a_patch(schema):
    body = schema["paths"]["/machines/{id}/status/"]["patch"]["requestBody"]
    assert body["required"] is True
    assert _component(schema, "MachineStatusRequest")["required"] == ["status"]
    assert _component(schema, "SettableMachineStatusEnum")["enum"] == ["available", "maintenance"]


def test_money_is_a_non_negative_decimal_string(schema):
    cost = _component(schema, "MachineRequest")["properties"]["hourly_cost"]
    assert cost["type"] == "string" and cost["pattern"] == r"^\d{1,8}(?:\.\d{1,2})?$"


def test_text_fields_state_that_nul_and_blank_are_refused(schema):
    name = _component(schema, "MachineRequest")["properties"]["name"]
    assert name["pattern"] == r"^[^\x00]*[^\s\x00][^\x00]*$"
    line = _component(schema, "LogLineRequest")["properties"]["line"]
    assert "pattern" not in line  # log lines keep NULs (stored as U+FFFD)


def test_a_new_simulation_may_only_name_pending(schema):
    body = schema["paths"]["/simulations/"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/SimulationCreateRequest")
    assert _component(schema, "NewSimulationStatusEnum")["enum"] == ["pending"]


def test_guards_are_an_object_of_known_keys_with_bounds(schema):
    guards = _component(schema, "SimulationRequest")["properties"]["guards"]
    assert guards["additionalProperties"] is False
    assert set(guards["properties"]) == {"nan", "stall_seconds", "plateau", "divergence"}
    assert guards["properties"]["divergence"]["properties"]["factor"]["exclusiveMinimum"] is True


def test_a_batch_point_has_loss_value_or_values_never_both(schema):
    point = _component(schema, "BatchPointRequest")
    assert [branch["required"] for branch in point["oneOf"]] == [["loss_value"], ["values"]]
    assert point["properties"]["values"]["minProperties"] == 1
    assert _component(schema, "PointInputRequest")["properties"]["values"]["not"] == {}


def test_lists_without_query_parameters_offer_none(schema):
    assert "parameters" not in schema["paths"]["/budgets/"]["get"]
