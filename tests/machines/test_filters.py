"""Machine list filters take what the schema says: integers in range, or nothing at all."""

import pytest

from tests.factories import make_machine
from tests.helpers import assert_error


@pytest.mark.parametrize("value", ["0.5", "1e3", "abc", "-1", str(2**31)])
def test_an_integer_filter_refuses_what_is_not_an_integer_in_range(api, value):
    response = api.get("/machines/", {"min_memory": value})
    assert "min_memory" in assert_error(response, 400, "invalid")["fields"]


def test_an_integer_filter_keeps_machines_at_or_above_it(api):
    make_machine(name="small", memory=64)
    make_machine(name="large", memory=512)
    names = [m["name"] for m in api.get("/machines/", {"min_memory": 128}).json()["results"]]
    assert names == ["large"]


def test_a_filter_sent_empty_is_ignored_as_the_schema_allows(api):
    make_machine(name="only")
    response = api.get("/machines/?min_gpus=&min_memory=&status=&name=")
    assert response.status_code == 200
    assert [m["name"] for m in response.json()["results"]] == ["only"]
