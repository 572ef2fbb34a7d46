"""simsched-agent: run the machine's simulations, or upload spools left behind."""

import argparse
import logging
import os
import shlex
import signal
import sys
import threading

from simsched_agent._http import Api
from simsched_agent._machine import MachineAgent
from simsched_agent._points import Counters, Sender
from simsched_agent._spool import claim_orphans, replay_file


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("SIMSCHED_URL"), help="The server (or SIMSCHED_URL)."
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("SIMSCHED_TOKEN"),
        help="The machine's agent token (or SIMSCHED_TOKEN, which keeps it out of `ps`).",
    )


def _agent_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simsched-agent",
        description="Run this machine's simulations: claim, launch the command, heartbeat, ship "
        "its output, report how it ended. `simsched-agent sync DIR` uploads leftover spools.",
    )
    _connection_args(parser)
    parser.add_argument(
        "--grace", type=float, default=30.0, help="Seconds between SIGTERM and SIGKILL."
    )
    parser.add_argument("--heartbeat", type=float, default=5.0, help="Seconds between heartbeats.")
    parser.add_argument(
        "--claim-interval", type=float, default=2.0, help="Seconds between claims when idle."
    )
    parser.add_argument("--state-dir", help="Where the agent keeps its state and the runs' output.")
    parser.add_argument(
        "--default-command",
        type=shlex.split,
        help="What to run for a simulation that has no command (a shell-quoted string).",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _sync_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simsched-agent sync",
        description="Upload the spool files under DIR that no running process owns; each is "
        "deleted once the server has all of it (replays store nothing twice).",
    )
    parser.add_argument("directory")
    _connection_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sync"]:
        return _sync(_sync_parser().parse_args(argv[1:]))
    options = _agent_parser().parse_args(argv)
    if not options.url or not options.token:
        _agent_parser().error("--url and --token (or SIMSCHED_URL and SIMSCHED_TOKEN) are required")
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else logging.INFO,
        format="%(asctime)s simsched-agent %(levelname)s %(message)s",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent = MachineAgent(
        options.url,
        options.token,
        grace=options.grace,
        heartbeat=options.heartbeat,
        state_dir=options.state_dir,
        default_command=options.default_command,
        claim_interval=options.claim_interval,
    )
    agent.run(stop)
    return 0


def _sync(options) -> int:
    if not options.url or not options.token:
        _sync_parser().error("--url and --token (or SIMSCHED_URL and SIMSCHED_TOKEN) are required")
    api, counters, senders = Api(options.url, options.token), Counters(), {}

    def sender(simulation_id: int) -> Sender:
        if simulation_id not in senders:
            senders[simulation_id] = Sender(api, simulation_id, counters)
        return senders[simulation_id]

    files = claim_orphans(options.directory)
    left = [path for path in files if not replay_file(path, sender)]
    print(
        f"{len(files) - len(left)} of {len(files)} spool file(s) uploaded: "
        f"{counters.stored} values stored, {counters.duplicates} already there, "
        f"{counters.rejected} refused"
    )
    for path in left:
        print(f"not uploaded (the server did not take it; try again): {path}", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
