"""`python -m simsched_agent._launch EXIT_FILE -- COMMAND...`: runs COMMAND and writes how it
ended to EXIT_FILE, so an agent that was restarted meanwhile still learns the exit code of a
process it did not start. The agent starts this as the leader of a new process group; a
signal to the group reaches COMMAND (and its children) directly, this process waits on."""

import json
import os
import signal
import subprocess
import sys


def main() -> int:
    exit_file, separator, *command = sys.argv[1:]
    assert separator == "--" and command, "usage: _launch EXIT_FILE -- COMMAND..."
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # A handler (not SIG_IGN, which exec would pass on to COMMAND): the group's signal is
        # COMMAND's to act on; this process only records the outcome.
        signal.signal(sig, lambda *_: None)
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"simsched-agent: cannot run {command[0]!r}: {exc}", file=sys.stderr, flush=True)
        _record(exit_file, {"exit_code": 127, "signal": None, "error": str(exc)})
        return 127
    code = child.wait()
    outcome = (
        {"exit_code": code, "signal": None} if code >= 0 else {"exit_code": None, "signal": -code}
    )
    _record(exit_file, outcome)
    return code if code >= 0 else 128 - code


def _record(path: str, outcome: dict) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(outcome, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())
