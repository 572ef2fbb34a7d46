"""The client library inside a real training process (a subprocess), against a real server
that comes and goes: log() never blocks or raises, and every value is stored exactly once."""

import json
import math
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection
from simsched_agent._run import REQUEST_TIMEOUT_SECONDS

from convergence.models import ConvergencePoint
from tests.agent.conftest import PYTHON, script, simulation_running, wait_for
from tests.servers import BIN, REPO, database_url, free_port, start_daphne

pytestmark = pytest.mark.slow
SERIES = ("loss", "lr", "val/loss")  # what the outage test logs at every step


def _env(url: str, token: str, simulation, spool) -> dict:
    return {
        **os.environ,
        "SIMSCHED_URL": url,
        "SIMSCHED_TOKEN": token,
        "SIMSCHED_SIMULATION_ID": str(simulation.pk),
        "SIMSCHED_SPOOL_DIR": str(spool),
    }


def _stored(simulation, metric: str = "loss") -> dict[int, float]:
    rows = ConvergencePoint.objects.filter(simulation=simulation, series__metric=metric)
    return dict(rows.values_list("step", "loss_value"))


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def _train(train, env: dict) -> dict:
    """Run a training script to its end; the stats it printed last."""
    result = subprocess.run(
        [PYTHON, str(train)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return _last_json(result.stdout)


def test_non_finite_and_invalid_values_are_counted_and_cost_the_others_nothing(
    server, owner, machine, machine_token, tmp_path
):
    train = script(
        tmp_path,
        "train.py",
        """
        import json, simsched_agent
        run = simsched_agent.init()
        for step in range(100):
            loss = {50: float("nan"), 60: float("inf")}.get(step, 1.0 / (step + 1))
            run.log(step, loss=loss)
        run.log(-1, loss=0.5)         # not a step
        run.log(101, loss="not a number")
        run.log(102, ["not", "a", "mapping"])
        print(json.dumps({"delivered": run.finish(timeout=30), **run.stats}))
        """,
    )
    simulation = simulation_running(owner, machine, ["true"])
    stats = _train(train, _env(server.url, machine_token, simulation, tmp_path / "spool"))
    assert stats["delivered"] and stats["stored"] == 98 and stats["rejected"] == 4
    assert stats["dropped"] == 1  # the list, which is no mapping
    assert sorted(_stored(simulation)) == [s for s in range(100) if s not in (50, 60)]


def test_finish_with_the_server_away_leaves_the_spool_and_sync_uploads_it(
    server, owner, machine, machine_token, tmp_path
):
    train = script(
        tmp_path,
        "train.py",
        """
        import json, simsched_agent
        run = simsched_agent.init()
        for step in range(1000):
            run.log(step, loss=1.0 / (step + 1))
        print(json.dumps({"delivered": run.finish(timeout=1), **run.stats}))
        """,
    )
    simulation = simulation_running(owner, machine, ["true"])
    nobody = f"http://127.0.0.1:{free_port()}"
    spool = tmp_path / "spool"
    stats = _train(train, _env(nobody, machine_token, simulation, spool))
    assert not stats["delivered"] and stats["spooled_steps"] == 1000 and stats["dropped"] == 0
    assert list(spool.glob("simsched-*.jsonl"))
    sync = subprocess.run(
        [str(BIN / "simsched-agent"), "sync", str(spool), "--url", server.url],
        env={**os.environ, "SIMSCHED_TOKEN": machine_token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sync.returncode == 0, sync.stderr
    assert "1000 values stored" in sync.stdout
    assert sorted(_stored(simulation)) == list(range(1000))
    assert not list(spool.glob("simsched-*.jsonl"))


def test_framework_scalars_logged_while_the_server_is_away_are_spooled_and_synced(
    server, owner, machine, machine_token, tmp_path
):
    """Training code logs numpy / torch scalars, not floats: JSON cannot write them, and a
    tensor's conversion can raise. Spooling them used to kill the sender thread, and every
    value after it was lost."""
    train = script(
        tmp_path,
        "train.py",
        """
        import json, simsched_agent

        class Scalar:  # what numpy.float32 and a 0-d tensor are to JSON: not a float
            def __init__(self, value): self.value = value
            def __float__(self): return self.value

        class Step:  # numpy.int64
            def __init__(self, value): self.value = value
            def __int__(self): return self.value
            __index__ = __int__

        class Broken:  # a tensor whose device failed
            def __float__(self): raise RuntimeError("CUDA error: device-side assert")

        run = simsched_agent.init()
        for step in range(300):
            run.log(Step(step), loss=Scalar(1.0 / (step + 1)), lr=0.1)
            if step == 7:
                run.log(step, grad_norm=Broken())
        print(json.dumps({"delivered": run.finish(timeout=1), **run.stats}))
        """,
    )
    simulation = simulation_running(owner, machine, ["true"])
    spool = tmp_path / "spool"
    stats = _train(train, _env(f"http://127.0.0.1:{free_port()}", machine_token, simulation, spool))
    assert not stats["delivered"] and stats["dropped"] == 0 and stats["rejected"] == 1
    sync = subprocess.run(
        [str(BIN / "simsched-agent"), "sync", str(spool), "--url", server.url],
        env={**os.environ, "SIMSCHED_TOKEN": machine_token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sync.returncode == 0, sync.stderr
    assert "600 values stored" in sync.stdout
    assert _stored(simulation) == {step: 1.0 / (step + 1) for step in range(300)}
    assert sorted(_stored(simulation, "lr")) == list(range(300))


def test_an_encoder_process_killed_mid_run_loses_nothing(
    server, owner, machine, machine_token, tmp_path
):
    """The batches are written as JSON by a child process; when it dies, the sender thread
    writes them itself, and nothing logged before, during or after is lost."""
    train = script(
        tmp_path,
        "train.py",
        """
        import json, os, signal, time, simsched_agent
        run = simsched_agent.init()
        for step in range(1000):
            run.log(step, loss=1.0 / (step + 1), lr=0.1)
        while run.stats["stored"] < 2000:
            time.sleep(0.05)
        encoder = run._worker.encoder
        os.kill(encoder.process.pid, signal.SIGKILL)
        for step in range(1000, 2000):
            run.log(step, loss=1.0 / (step + 1), lr=0.1)
        delivered = run.finish(timeout=30)
        print(json.dumps({"delivered": delivered, "failed": encoder.failed, **run.stats}))
        """,
    )
    simulation = simulation_running(owner, machine, ["true"])
    stats = _train(train, _env(server.url, machine_token, simulation, tmp_path / "spool"))
    assert stats["delivered"] and stats["failed"] and stats["stored"] == 4000
    assert stats["dropped"] == 0 and stats["rejected"] == 0
    assert _stored(simulation) == {step: 1.0 / (step + 1) for step in range(2000)}


def test_sigterm_flushes_what_was_logged_then_ends_the_process_as_sigterm_does(
    server, owner, machine, machine_token, tmp_path
):
    train = script(
        tmp_path,
        "train.py",
        """
        import time, simsched_agent
        run = simsched_agent.init()
        for step in range(500):
            run.log(step, loss=1.0 / (step + 1))
        print("logged", flush=True)
        time.sleep(600)
        """,
    )
    simulation = simulation_running(owner, machine, ["true"])
    proc = subprocess.Popen(
        [PYTHON, str(train)],
        env=_env(server.url, machine_token, simulation, tmp_path / "spool"),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "logged"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
    assert sorted(_stored(simulation)) == list(range(500))


def test_a_spool_left_by_a_killed_process_is_replayed_by_the_next_process_of_the_run(
    server, owner, machine, machine_token, tmp_path
):
    """The training process is SIGKILLed while the server is unreachable: what it had spooled
    is not lost; the next process of the same simulation (a restart) sends it first."""
    first = script(
        tmp_path,
        "first.py",
        """
        import time, simsched_agent
        run = simsched_agent.init()
        for step in range(200):
            run.log(step, loss=1.0 / (step + 1))
        while run.stats["spooled_steps"] < 200:
            time.sleep(0.05)
        print("spooled", flush=True)
        time.sleep(600)
        """,
    )
    simulation = simulation_running(owner, machine, ["true"])
    spool = tmp_path / "spool"
    nobody = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [PYTHON, str(first)],
        env=_env(nobody, machine_token, simulation, spool),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "spooled"
    proc.kill()
    proc.wait(timeout=10)
    second = script(
        tmp_path,
        "second.py",
        """
        import simsched_agent
        with simsched_agent.init() as run:
            for step in range(200, 300):
                run.log(step, loss=1.0 / (step + 1))
        """,
    )
    subprocess.run(
        [PYTHON, str(second)],
        env=_env(server.url, machine_token, simulation, spool),
        check=True,
        timeout=60,
    )
    assert sorted(_stored(simulation)) == list(range(300))
    assert not list(spool.glob("simsched-*.jsonl"))


@pytest.mark.postgres
def test_a_server_stopped_for_30_s_mid_run_loses_nothing_and_stores_each_value_once(
    server, owner, machine, machine_token, tmp_path
):
    """50,000 steps logged at ~1,250 steps/s; the server is stopped for 30 s once 5,000 are
    stored, then started again on the same port."""
    steps = 50_000
    train = script(
        tmp_path,
        "train.py",
        f"""
        import json, math, time, simsched_agent
        series = {SERIES!r}
        run = simsched_agent.init()
        started = time.monotonic()
        for step in range({steps}):
            run.log(step, {{name: math.exp(-step / 10_000) + i for i, name in enumerate(series)}})
            if step % 125 == 124:
                time.sleep(max(0.0, started + (step + 1) / 1250 - time.monotonic()))
        print(json.dumps({{"delivered": run.finish(timeout=120), **run.stats}}))
        """,
    )
    simulation = simulation_running(owner, machine, ["true"])
    proc = subprocess.Popen(
        [PYTHON, str(train)],
        env=_env(server.url, machine_token, simulation, tmp_path / "spool"),
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    wait_for(
        lambda: ConvergencePoint.objects.filter(simulation=simulation).count() >= 5000,
        "5,000 stored",
    )
    server.stop()
    connection.close()
    time.sleep(30)  # the outage itself, not a wait for something
    restarted = start_daphne(
        {"DATABASE_URL": database_url(connection.settings_dict)}, port=server.port
    )
    try:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        stats = _last_json(output)
        assert stats["delivered"] and stats["dropped"] == 0 and stats["rejected"] == 0
        assert stats["spooled_steps"] == 0
        values = len(SERIES) * steps
        # Some answers were lost with the server: their values came back as duplicates.
        assert stats["stored"] <= values <= stats["stored"] + stats["duplicates"]
        assert ConvergencePoint.objects.filter(simulation=simulation).count() == values
        for offset, metric in enumerate(SERIES):
            stored = _stored(simulation, metric)
            assert sorted(stored) == list(range(steps))
            assert all(stored[s] == math.exp(-s / 10_000) + offset for s in range(steps))
    finally:
        restarted.stop()


class _SlowServer(BaseHTTPRequestHandler):
    """Takes points, but answers each request only after `delay` seconds (an overloaded
    server, an exhausted database pool)."""

    delay = 3.0
    received: set = set()

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay)
        steps = [point["step"] for point in json.loads(body)["points"]]
        self.received.update(steps)
        answer = json.dumps({"stored": len(steps), "duplicates": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def _spooled_steps(spool) -> set[int]:
    steps = set()
    for path in spool.rglob("simsched-*.jsonl"):
        for line in path.read_text().splitlines():
            steps.update(point[0] for point in json.loads(line)["points"])
    return steps


@pytest.mark.parametrize(
    ("delay", "bound"),
    [
        (3.0, 1.0 + 3.0 + 1.0),  # the request in flight at the deadline ends in 3 s
        (60.0, 1.0 + REQUEST_TIMEOUT_SECONDS + 1.0),  # it ends by its own timeout
    ],
    ids=["slow", "silent"],
)
def test_finish_returns_by_its_timeout_plus_the_request_in_flight_and_spools_the_rest(
    tmp_path, delay, bound
):
    handler = type("Handler", (_SlowServer,), {"delay": delay, "received": set()})
    slow = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    spool = tmp_path / "spool"
    train = script(
        tmp_path,
        "train.py",
        f"""
        import json, time, simsched_agent
        run = simsched_agent.init("http://127.0.0.1:{slow.server_port}", "token", 1,
                                  spool_dir={str(spool)!r})
        for step in range(100_000):
            run.log(step, loss=1.0 / (step + 1))
        started = time.monotonic()
        delivered = run.finish(timeout=1.0)
        took = time.monotonic() - started
        print(json.dumps({{"took": took, "delivered": delivered, "returned_at": time.time()}}))
        """,
    )
    try:
        stats = _train(train, {**os.environ})
        exited_at = time.time()
    finally:
        slow.shutdown()
    assert stats["took"] <= bound, stats
    assert exited_at - stats["returned_at"] <= 1.5  # atexit finds nothing left to wait for
    assert not stats["delivered"]
    assert handler.received | _spooled_steps(spool) == set(range(100_000))
