"""Demo agents: the real machine agent (simsched_agent), one per machine, each running the
demo training script (agent/examples/train_demo.py) for simulations that name no command."""

import logging
import sys
import threading

from django.conf import settings
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token
from simsched_agent._machine import MachineAgent

from machines.models import Machine
from machines.services import machine_agent_user

DEMO_SCRIPT = settings.BASE_DIR / "agent" / "examples" / "train_demo.py"


class Command(BaseCommand):
    help = (
        "Run the machine agent for the fleet's machines, in this process: each claims work over "
        "the HTTP agent API, launches the simulation's command (or the demo training script, "
        "which reports loss, lr and val/loss with the client library), heartbeats, ships its "
        "output and reports how it ended. Some demo runs crash or hang."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="The server.")
        parser.add_argument("--machines", nargs="*", help="Machine names (default: all).")
        parser.add_argument("--points", type=int, default=1500, help="Steps per demo run.")
        parser.add_argument("--batch", type=int, default=25, help="Demo steps per interval.")
        parser.add_argument(
            "--interval", type=float, default=0.5, help="Seconds per batch of steps (0: flat out)."
        )
        parser.add_argument("--claim-interval", type=float, default=2.0)
        parser.add_argument("--heartbeat", type=float, default=5.0)
        parser.add_argument("--crash-rate", type=float, default=0.0, help="Share that crash.")
        parser.add_argument(
            "--silent-rate", type=float, default=0.0, help="Share that hang (stop stepping)."
        )
        parser.add_argument(
            "--series",
            default="loss,lr,val/loss",
            help="The demo runs' series (comma-separated).",
        )
        parser.add_argument("--state-dir", default=None, help="Base of the agents' state.")
        parser.add_argument("--duration", type=float, default=None, help="Stop after N seconds.")

    def handle(self, *args, url, machines, duration, **options):
        if not logging.getLogger("simsched_agent").handlers:
            handler = logging.StreamHandler(self.stdout)
            handler.setFormatter(logging.Formatter("%(threadName)s: %(message)s"))
            logging.getLogger("simsched_agent").addHandler(handler)
            logging.getLogger("simsched_agent").setLevel(logging.INFO)
        fleet = Machine.objects.order_by("name")
        if machines:
            fleet = fleet.filter(name__in=machines)
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=self._agent(url, machine, options).run,
                args=(stop,),
                name=f"agent-{machine.name}",
                daemon=True,
            )
            for machine in fleet
        ]
        for thread in threads:
            thread.start()
        self.stdout.write(f"{len(threads)} agent(s) working against {url}")
        try:
            stop.wait(duration)
        except KeyboardInterrupt:
            pass
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    def _agent(self, url: str, machine: Machine, options: dict) -> MachineAgent:
        interval = options["interval"]
        rate = options["batch"] / interval if interval > 0 else 0
        demo = [sys.executable, str(DEMO_SCRIPT), "--steps", str(options["points"])]
        demo += ["--rate", str(rate), "--crash-rate", str(options["crash_rate"])]
        demo += ["--hang-rate", str(options["silent_rate"]), "--series", options["series"]]
        token, _ = Token.objects.get_or_create(user=machine_agent_user(machine=machine))
        state_dir = options["state_dir"]
        return MachineAgent(
            url,
            token.key,
            heartbeat=options["heartbeat"],
            claim_interval=options["claim_interval"],
            default_command=demo,
            grace=5.0,
            state_dir=f"{state_dir}/{machine.name}" if state_dir else None,
        )
