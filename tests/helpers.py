"""Assertions shared by every test package."""


def error_of(response) -> dict:
    """The one error shape: {"error": {"code", "message", "fields"?, "details"?}}."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body["error"]


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response is the one error shape with `status` (and `code`); returns the error."""
    assert response.status_code == status, response.content
    error = error_of(response)
    if code is not None:
        assert error["code"] == code
    return error
