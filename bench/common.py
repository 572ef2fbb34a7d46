"""Shared plumbing for the benchmark scripts: a throwaway PostgreSQL database, a real daphne
server as a subprocess, keep-alive HTTP, peak memory, statistics, and bench/RESULTS.md sections.

Every script only talks to 127.0.0.1 and bounds its loops in count and time.
"""

import http.client
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
DAPHNE = str(ROOT / ".venv" / "bin" / "daphne")
RESULTS = ROOT / "bench" / "RESULTS.md"
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
BENCH_DB = os.environ.get("SIMSCHED_BENCH_DB", "simsched_bench")  # override to run two at once
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"
REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_PREFIX = "bench"
HOST = "127.0.0.1"
sys.path.insert(0, str(ROOT))  # the project's packages, and tests.servers' private services


def server_env(*, redis_url: str = REDIS_URL, **extra: str) -> dict[str, str]:
    """The production-like environment the server and the setup code run with."""
    env = dict(os.environ)
    env.update(
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        SECURE_SSL_REDIRECT="0",
        SESSION_COOKIE_SECURE="0",
        CSRF_COOKIE_SECURE="0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=redis_url,
        REDIS_PREFIX=REDIS_PREFIX,
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def fresh_database() -> None:
    """Drop and recreate the bench database, then migrate it."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--verbosity", "0"],
        cwd=ROOT,
        env=server_env(),
        check=True,
    )


def drop_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def django_setup(**env: str) -> None:
    """Configure Django in this process against the bench database (for setup and checks)."""
    os.environ.update(server_env(**env))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "simsched.settings")
    import django

    django.setup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """One server serving simsched on a free loopback port: daphne, or `argv` (a command line
    in which `{port}` is replaced, e.g. bin/serve-http's)."""

    def __init__(
        self,
        *,
        redis_url: str = REDIS_URL,
        port: int | None = None,
        argv: list[str] | None = None,
        cwd: Path = ROOT,
        **env: str,
    ):
        self.port = port or free_port()
        self.redis_url = redis_url
        log_path = Path(tempfile.gettempdir()) / f"simsched-bench-server-{self.port}.log"
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        argv = argv or [DAPHNE, "-b", HOST, "-p", "{port}", "simsched.asgi:application"]
        self.proc = subprocess.Popen(
            [arg.replace("{port}", str(self.port)) for arg in argv],
            cwd=cwd,
            env={
                k: v.replace("{port}", str(self.port))
                for k, v in server_env(redis_url=redis_url, **env).items()
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # never leave an orphaned server behind
            raise

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/health")
                conn.getresponse().read()
                return  # any answer: the server is up
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def peak_memory_mib(self) -> float:
        """VmHWM: the resident set's high-water mark since the process started."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def reset_peak(self) -> None:
        """Start a new high-water mark (writing 5 to clear_refs resets VmHWM to the RSS)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its worker processes so far: per request, a
        figure that load from other people on the machine moves much less than wall time."""
        return sum(_cpu_seconds(pid) for pid in [self.proc.pid, *_children(self.proc.pid)])

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Every descendant of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found + [grandchild for child in found for grandchild in _children(child)]


class Client:
    """A keep-alive JSON client over one connection (stdlib http.client)."""

    def __init__(self, port: int, token: str, timeout: float = 120):
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def request(self, method: str, path: str, body=None) -> tuple[int, bytes]:
        payload = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        self.conn.request(method, path, body=payload, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def json(self, method: str, path: str, body=None, expect: tuple[int, ...] = (200, 201)):
        status, data = self.request(method, path, body)
        if status not in expect:
            raise RuntimeError(f"{method} {path} -> {status}: {data[:300]!r}")
        return json.loads(data) if data else None

    def close(self) -> None:
        self.conn.close()


class RawClient:
    """Keep-alive HTTP/1.1 POSTs over a plain socket: one sendall per request, the answer read by
    Content-Length. For per-request figures, where http.client's own Python work would be a
    fifth of each request's time and so be measured as the server's."""

    def __init__(self, port: int, token: str, timeout: float = 120):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = (
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Token {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
        self.host, self.token = f"{HOST}:{port}", token
        self.pending = b""

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = self.head.format(path=path, host=self.host, token=self.token, length=len(body))
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.pending:
            self._read()
        header, self.pending = self.pending.split(b"\r\n\r\n", 1)
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.lower().split(":", 1) for line in lines[1:])
        length = int(fields["content-length"])
        while len(self.pending) < length:
            self._read()
        data, self.pending = self.pending[:length], self.pending[length:]
        return status, data

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.pending += chunk

    def close(self) -> None:
        self.sock.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"p50 {statistics.median(ms):.1f} ms, p99 {percentile(ms, 99):.1f} ms "
        f"(n={len(ms)}, max {max(ms):.1f} ms)"
    )


def machine_line() -> str:
    import psycopg

    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    with psycopg.connect(PG_ADMIN) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    return (
        f"machine: nproc={os.cpu_count()}, memory {mem_kib / 1024 / 1024:.1f} GiB, "
        f"PostgreSQL {pg}, Python {platform.python_version()}; shared with other people's "
        "test runs, so figures are noisy"
    )


def write_section(name: str, title: str, command: str, body: str) -> None:
    """Replace (or append) this script's section of bench/RESULTS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"{start}\n## {title}\n\n"
        f"Command: `{command}`  \nRun: {when}; {machine_line()}.\n\n{body.strip()}\n{end}"
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def make_fixtures(*, simulations: int = 1, owner_staff: bool = True) -> tuple[str, list[int]]:
    """A staff user with a DRF token and `simulations` pending simulations with no machine
    requirements left unscheduled (no machines exist). Returns (token, simulation ids)."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from simulations.models import Simulation

    user, _ = get_user_model().objects.get_or_create(
        username="bench-staff", defaults={"is_staff": True, "is_superuser": True}
    )
    token, _ = Token.objects.get_or_create(user=user)
    sims = Simulation.objects.bulk_create(
        [Simulation(name=f"bench-{i}", owner=user) for i in range(simulations)]
    )
    return token.key, [s.pk for s in sims]


def make_running(simulation_ids: list[int]) -> None:
    """Put simulations in `running`, each on a busy machine of its own (the database refuses an
    active simulation without one: `active_simulation_has_machine`)."""
    from django.utils import timezone

    from machines.models import Machine
    from simulations.models import Simulation

    now = timezone.now()
    machines = Machine.objects.bulk_create(
        [
            Machine(name=f"bench-m{pk}", cpu="bench", memory=16, status=Machine.Status.BUSY)
            for pk in simulation_ids
        ]
    )
    sims = list(Simulation.objects.filter(pk__in=simulation_ids).order_by("pk"))
    for sim, machine in zip(sims, machines, strict=True):
        sim.status, sim.machine = Simulation.Status.RUNNING, machine
        sim.scheduled_at = sim.started_at = sim.last_heartbeat_at = now
    Simulation.objects.bulk_update(
        sims, ["status", "machine", "scheduled_at", "started_at", "last_heartbeat_at"]
    )


def make_finished(simulation_ids: list[int], *, days_ago: float) -> None:
    """Put simulations in `finished`, ended `days_ago` days before now (what `compact` picks)."""
    from datetime import timedelta

    from django.utils import timezone

    from simulations.models import Simulation

    ended = timezone.now() - timedelta(days=days_ago)
    Simulation.objects.filter(pk__in=simulation_ids).update(
        status=Simulation.Status.FINISHED,
        created_at=ended - timedelta(days=1),
        started_at=ended - timedelta(hours=20),
        finished_at=ended,
    )
