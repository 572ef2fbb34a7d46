"""LOG_FORMAT=json: one JSON object per line, carrying the request's id, user and simulation."""

import json
import logging

import pytest

from simsched.observability.logs import JSONFormatter
from tests.factories import make_simulation, token_client


@pytest.fixture
def json_lines():
    """Every record logged while the test runs, formatted as LOG_FORMAT=json formats it."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lines
    finally:
        root.removeHandler(handler)


def _lines(lines, logger: str) -> list[dict]:
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    return [line for line in parsed if line["logger"] == logger]


def test_a_refused_write_logs_one_json_line_with_request_user_and_simulation(user, json_lines):
    simulation = make_simulation(owner=user)
    response = token_client(user).post(
        f"/convergence/{simulation.pk}/points",
        {"points": [{"step": -1, "loss_value": 1.0}]},
        format="json",
        HTTP_X_REQUEST_ID="trace-abc.123",
    )
    assert response.status_code == 400
    assert response["X-Request-ID"] == "trace-abc.123"

    [line] = _lines(json_lines, "django.request")
    assert line["level"] == "WARNING"
    assert line["request_id"] == "trace-abc.123"
    assert line["user"] == user.username
    assert line["simulation_id"] == simulation.pk
    assert line["status_code"] == 400
    assert line["path"] == f"/convergence/{simulation.pk}/points"


def test_a_single_point_write_names_the_simulation_from_its_body(user, json_lines):
    simulation = make_simulation(owner=user)
    response = token_client(user).post(
        "/convergence/data", {"simulation_id": simulation.pk, "loss_value": "NaN"}, format="json"
    )
    assert response.status_code == 400

    [line] = _lines(json_lines, "django.request")
    assert line["simulation_id"] == simulation.pk
    assert len(line["request_id"]) == 32  # a fresh id when the client sends none
    assert response["X-Request-ID"] == line["request_id"]


def test_an_insane_request_id_is_replaced(user, json_lines):
    response = token_client(user).get("/nowhere", HTTP_X_REQUEST_ID="x" * 65 + "\n")
    assert response.status_code == 404
    [line] = _lines(json_lines, "django.request")
    assert line["request_id"] == response["X-Request-ID"] != "x" * 65


def test_lines_outside_a_request_carry_no_request_fields(json_lines):
    logging.getLogger("simsched.test").warning("scheduler pass took %d ms", 12)
    [line] = _lines(json_lines, "simsched.test")
    assert line["message"] == "scheduler pass took 12 ms"
    assert "request_id" not in line and "user" not in line


def test_log_format_json_makes_every_line_of_a_process_one_json_object():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "import logging; logging.getLogger('simsched.x').warning('hello %s', 'ops')"],
        cwd=root, env={**os.environ, "LOG_FORMAT": "json"},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    [line] = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert line["message"] == "hello ops" and line["logger"] == "simsched.x"
