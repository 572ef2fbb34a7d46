"""Demo agents: one thread per machine doing what real agent code does, over HTTP only."""

import json
import random
import threading
import time
import urllib.error
import urllib.request

from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from convergence.curves import LossCurve
from machines.models import Machine
from machines.services import machine_agent_user

HTTP_TIMEOUT = 10
RETRIES = 3


class AgentAPI:
    """The agent's side of the HTTP API, with retries (every write is idempotent)."""

    def __init__(self, base_url: str, token: str):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def post(self, path: str, body=None) -> tuple[int, dict | None]:
        return self._call("POST", path, body)

    def get(self, path: str) -> tuple[int, dict | None]:
        return self._call("GET", path, None)

    def _call(self, method, path, body):
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(RETRIES):
            request = urllib.request.Request(
                self.base_url + path, data=data, method=method, headers=self.headers
            )
            try:
                with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                    raw = response.read()
                    return response.status, json.loads(raw) if raw else None
            except urllib.error.HTTPError as error:
                if error.code < 500:
                    raw = error.read()
                    return error.code, json.loads(raw) if raw else None
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                pass
            time.sleep(0.5 * 2**attempt)
        return 503, None


class DemoAgent(threading.Thread):
    def __init__(self, machine_name: str, api: AgentAPI, options: dict, stop: threading.Event, log):
        super().__init__(name=f"agent-{machine_name}", daemon=True)
        self.machine_name, self.api, self.options, self.stop, self.log = (
            machine_name,
            api,
            options,
            stop,
            log,
        )
        self.rng = random.Random(machine_name)

    def run(self):
        while not self.stop.is_set():
            status, simulation = self.api.post("/agent/claim")
            if status != 200:
                self.stop.wait(self.options["claim_interval"])
                continue
            if simulation["status"] == "scheduled":
                self.api.post(f"/simulations/{simulation['id']}/start")
            self.work(simulation)

    def work(self, simulation: dict) -> None:
        sim_id, total = simulation["id"], self.options["points"]
        curve = LossCurve(sim_id, total_steps=total)
        last = simulation["progress"]["last_step"]
        step = 0 if last is None else last + 1
        fate = self.rng.random()
        crash_at = total * self.rng.uniform(0.2, 0.8) if fate < self.options["crash_rate"] else None
        silent = (
            self.options["crash_rate"]
            <= fate
            < self.options["crash_rate"] + self.options["silent_rate"]
        )
        silent_at = total * self.rng.uniform(0.2, 0.8) if silent else None
        self.log(f"{self.machine_name}: running simulation {sim_id} from step {step}")
        while step < total and not self.stop.is_set():
            batch = range(step, min(step + self.options["batch"], total))
            points = [{"step": s, "loss_value": curve.loss(s)} for s in batch]
            self.api.post(f"/convergence/{sim_id}/points", {"points": points})
            step = batch.stop
            status, beat = self.api.post(f"/simulations/{sim_id}/heartbeat")
            if status == 200 and beat["stop"]:
                self.log(f"{self.machine_name}: simulation {sim_id} is {beat['status']}; stopping")
                return
            if status != 200 and status < 500:  # no longer ours to run
                self.log(f"{self.machine_name}: heartbeat refused ({status}); stopping")
                return
            if crash_at is not None and step >= crash_at:
                self.api.post(f"/simulations/{sim_id}/fail", {"reason": "Demo agent crashed."})
                self.log(f"{self.machine_name}: simulation {sim_id} crashed")
                return
            if silent_at is not None and step >= silent_at:
                self.log(f"{self.machine_name}: going silent on simulation {sim_id}")
                return self._stay_silent(sim_id)
            self.stop.wait(self.options["interval"])
        if step >= total:
            self.api.post(f"/simulations/{sim_id}/finish")
            self.log(f"{self.machine_name}: simulation {sim_id} finished")

    def _stay_silent(self, sim_id: int) -> None:
        """Say nothing until the scheduler gives up on us and the simulation leaves us."""
        while not self.stop.is_set():
            status, simulation = self.api.get(f"/simulations/{sim_id}")
            if status != 200 or simulation["status"] not in ("scheduled", "running"):
                return
            self.stop.wait(5)


class Command(BaseCommand):
    help = (
        "Run demo agents for the fleet's machines: each claims work over the HTTP agent API, "
        "reports a realistic loss curve in batches, heartbeats and finishes. Some can crash "
        "or go silent so the scheduler's failure and timeout paths can be seen."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="The server.")
        parser.add_argument("--machines", nargs="*", help="Machine names (default: all).")
        parser.add_argument("--points", type=int, default=1500, help="Steps per simulation.")
        parser.add_argument("--batch", type=int, default=25, help="Points per report.")
        parser.add_argument("--interval", type=float, default=0.5, help="Seconds between reports.")
        parser.add_argument("--claim-interval", type=float, default=2.0)
        parser.add_argument("--crash-rate", type=float, default=0.0, help="Share that fail.")
        parser.add_argument("--silent-rate", type=float, default=0.0, help="Share that go silent.")
        parser.add_argument("--duration", type=float, default=None, help="Stop after N seconds.")

    def handle(self, *args, url, machines, duration, **options):
        fleet = Machine.objects.order_by("name")
        if machines:
            fleet = fleet.filter(name__in=machines)
        stop = threading.Event()
        lock = threading.Lock()

        def log(message):
            with lock:
                self.stdout.write(message)

        agents = [
            DemoAgent(machine.name, AgentAPI(url, self._token(machine)), options, stop, log)
            for machine in fleet
        ]
        for agent in agents:
            agent.start()
        self.stdout.write(f"{len(agents)} demo agent(s) working against {url}")
        try:
            stop.wait(duration)
        except KeyboardInterrupt:
            pass
        stop.set()
        for agent in agents:
            agent.join(timeout=HTTP_TIMEOUT)

    @staticmethod
    def _token(machine: Machine) -> str:
        token, _ = Token.objects.get_or_create(user=machine_agent_user(machine=machine))
        return token.key
