"""Real processes for tests that need them: daphne serving simsched, a private redis-server,
a private PostgreSQL 15 cluster. Each runs on a free loopback port and is stopped by its
`stop()`; tests never touch the shared services developers and CI run on 5432 / 6379.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(ready, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if ready():
            return
        time.sleep(0.1)
    output = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not start\n{output}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- HTTP -----------------------------------------------------------------------------------


@dataclass
class HttpResult:
    status: int
    body: bytes
    headers: dict

    def json(self):
        return json.loads(self.body)


def http(method: str, url: str, *, token: str | None = None, body=None, timeout: float = 10):
    """One request with urllib; error statuses are returned, not raised."""
    headers = {"Accept": "application/json"}
    data = None
    if token:
        headers["Authorization"] = f"Token {token}"
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResult(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as exc:
        return HttpResult(exc.code, exc.read(), dict(exc.headers))


# --- daphne ---------------------------------------------------------------------------------


def database_url(settings_dict: dict) -> str:
    """A DATABASE_URL naming the database Django is connected to (the test database)."""
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user, password = settings_dict.get("USER") or "", settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host, port = settings_dict.get("HOST") or "127.0.0.1", settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"


@dataclass
class Daphne:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        _stop_process(self.proc)


def start_daphne(
    env: dict[str, str], *, unset: tuple[str, ...] = (), port: int | None = None
) -> Daphne:
    """Serve simsched.asgi with `env` over this process's environment (on `port`, to restart a
    server where its clients expect it); returns once /health answers (with any status: a test
    may start it with a service down)."""
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(env)
    log = Path(tempfile.mkstemp(prefix="daphne-", suffix=".log")[1])
    proc = subprocess.Popen(
        [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "simsched.asgi:application"],
        cwd=REPO,
        env=full_env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = Daphne(proc, port, log)

    def answers() -> bool:
        try:
            http("GET", f"{server.url}/health", timeout=5)
        except OSError:
            return False
        return True

    try:
        _wait_until(answers, "daphne", proc, log)
    except RuntimeError:
        server.stop()
        raise
    return server


# --- Redis ----------------------------------------------------------------------------------


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Redis":
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_until(lambda: _port_open(self.port), "redis-server", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)
            self.proc = None


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def start_redis() -> Redis:
    return Redis(free_port()).start()


# --- PostgreSQL -----------------------------------------------------------------------------


def postgres_available() -> bool:
    return (PG_BIN / "initdb").exists() and shutil.which("runuser") is not None


@dataclass
class Postgres:
    """A throwaway cluster owned by the `postgres` OS user (initdb refuses to run as root)."""

    port: int
    data_dir: Path
    root: Path = field(repr=False)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _pg(self, *args: str) -> None:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root)

    def start(self) -> "Postgres":
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", "pg.log", "-w", "start")
        return self

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> None:
        self._pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)


def start_postgres() -> Postgres:
    root = Path(tempfile.mkdtemp(prefix="simsched-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = Postgres(free_port(), root / "data", root)
    server._pg("initdb", "-D", str(server.data_dir), "-A", "trust", "-U", "postgres")
    return server.start()


def manage(*args: str, env: dict[str, str]) -> str:
    """Run manage.py in a subprocess with `env` over this environment; returns its stdout."""
    result = subprocess.run(
        [str(BIN / "python"), "manage.py", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout
