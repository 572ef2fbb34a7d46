"""Production settings: refuse to start without a secret key, and pass Django's deploy checks."""

import os
import secrets
import subprocess

from tests.servers import BIN, REPO


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    return subprocess.run(
        [str(BIN / "python"), "manage.py", *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_debug_off_without_a_secret_key_refuses_to_start_with_a_clear_message():
    result = _manage("check", DEBUG="0")
    assert result.returncode != 0
    assert "DEBUG is off: set SECRET_KEY to a long random value." in result.stderr


def test_debug_off_with_a_real_secret_key_passes_the_deploy_checks():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(64),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_development_defaults_are_flagged_by_the_deploy_checks():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", DEBUG="1")
    assert result.returncode != 0
    assert "security.W018" in result.stderr  # DEBUG on
