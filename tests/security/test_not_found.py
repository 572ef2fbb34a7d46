"""An unknown path answers 404 in the one JSON error shape, with DEBUG on or off."""

import pytest
from django.test import Client, override_settings

from tests.helpers import assert_error

UNKNOWN = ["/nope", "/machines/1/nope", "/simulations/abc", "/convergence/1/unknown", "/ws/nope"]


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", UNKNOWN)
def test_an_unknown_path_is_a_json_404(api, path, debug):
    with override_settings(DEBUG=debug):
        response = api.get(path, HTTP_ACCEPT="text/html")
    assert response["Content-Type"].startswith("application/json")
    assert_error(response, 404, "not_found")


def test_pages_that_exist_are_still_html(transactional_db):
    response = Client().get("/login/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")


@override_settings(DEBUG=True)
def test_an_unknown_admin_path_is_a_json_404_with_debug_on(transactional_db, staff):
    client = Client()
    client.force_login(staff)
    assert_error(client.get("/admin/nope/"), 404, "not_found")


@override_settings(DEBUG=True)
def test_an_unknown_simulation_page_is_a_json_404_with_debug_on(transactional_db, user):
    client = Client()
    client.force_login(user)
    assert_error(client.get("/dashboard/simulations/987654"), 404, "not_found")
