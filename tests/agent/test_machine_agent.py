"""The machine agent, `simsched-agent`, running real commands for a real server."""

import json
import os
import signal
import time

import pytest
from django.db import connection

from machines.models import Machine
from simulations.models import LogLine, Simulation
from tests.agent.conftest import HEARTBEAT, PYTHON, script, simulation_running, wait_for
from tests.servers import database_url, start_daphne

pytestmark = pytest.mark.slow


def _status(simulation) -> str:
    simulation.refresh_from_db()
    return simulation.status


def _final(simulation):
    wait_for(lambda: _status(simulation) in Simulation.FINAL, f"simulation {simulation.pk} to end")
    return simulation


def _machine_status(machine) -> str:
    return Machine.objects.get(pk=machine.pk).status


def _log_text(simulation) -> list[tuple[str, str]]:
    return list(
        LogLine.objects.filter(simulation=simulation).order_by("seq").values_list("stream", "line")
    )


def test_a_command_that_exits_0_finishes_with_its_output_and_points(
    server, agents, owner, machine, machine_token, tmp_path
):
    train = script(
        tmp_path,
        "train.py",
        """
        import sys, simsched_agent
        with simsched_agent.init() as run:
            for step in range(300):
                run.log(step, loss=1.0 / (step + 1))
            print("trained 300 steps")
            print("a warning", file=sys.stderr)
        """,
    )
    simulation = simulation_running(owner, machine, [PYTHON, str(train)])
    agents(server.url, machine_token)
    assert _final(simulation).status == Simulation.Status.FINISHED, simulation.failure_reason
    assert simulation.points.count() == 300
    assert sorted(simulation.points.values_list("step", flat=True)) == list(range(300))
    assert _log_text(simulation) == [("stdout", "trained 300 steps"), ("stderr", "a warning")]
    assert _machine_status(machine) == Machine.Status.AVAILABLE


def test_the_child_gets_its_env_the_simsched_variables_and_its_working_dir(
    server, agents, owner, machine, machine_token, tmp_path
):
    workdir = tmp_path / "work"
    workdir.mkdir()
    dump = script(
        tmp_path,
        "dump.py",
        """
        import json, os
        keys = ["HF_TOKEN", "SIMSCHED_URL", "SIMSCHED_SIMULATION_ID", "SIMSCHED_TOKEN"]
        json.dump({"cwd": os.getcwd(), **{k: os.environ.get(k) for k in keys}},
                  open("seen.json", "w"))
        """,
    )
    simulation = simulation_running(
        owner,
        machine,
        [PYTHON, str(dump)],
        env={"HF_TOKEN": "hf_secret"},
        working_dir=str(workdir),
    )
    agent = agents(server.url, machine_token)
    assert _final(simulation).status == Simulation.Status.FINISHED
    seen = json.loads((workdir / "seen.json").read_text())
    assert seen["cwd"] == str(workdir)
    assert seen["HF_TOKEN"] == "hf_secret"
    assert seen["SIMSCHED_URL"] == server.url
    assert seen["SIMSCHED_SIMULATION_ID"] == str(simulation.pk)
    assert seen["SIMSCHED_TOKEN"] == machine_token
    assert "hf_secret" not in agent.output()


def test_a_crashing_command_fails_with_its_exit_code_and_stderr_tail(
    server, agents, owner, machine, machine_token, tmp_path
):
    crash = script(
        tmp_path,
        "crash.py",
        """
        import sys
        print("step 1")
        print("Traceback (most recent call last):", file=sys.stderr)
        print("RuntimeError: CUDA out of memory", file=sys.stderr)
        sys.exit(3)
        """,
    )
    simulation = simulation_running(owner, machine, [PYTHON, str(crash)])
    agents(server.url, machine_token)
    assert _final(simulation).status == Simulation.Status.FAILED
    assert "exit code 3" in simulation.failure_reason
    assert "RuntimeError: CUDA out of memory" in simulation.failure_reason
    assert ("stderr", "RuntimeError: CUDA out of memory") in _log_text(simulation)
    assert _machine_status(machine) == Machine.Status.AVAILABLE


def test_a_command_killed_by_a_signal_fails_naming_the_signal(
    server, agents, owner, machine, machine_token, tmp_path
):
    killed = script(
        tmp_path, "killed.py", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    simulation = simulation_running(owner, machine, [PYTHON, str(killed)])
    agents(server.url, machine_token)
    assert _final(simulation).status == Simulation.Status.FAILED
    assert "killed by signal 11 (SIGSEGV)" in simulation.failure_reason


def test_a_command_that_cannot_start_fails_clearly(server, agents, owner, machine, machine_token):
    simulation = simulation_running(owner, machine, ["/nonexistent/train"])
    agents(server.url, machine_token)
    assert _final(simulation).status == Simulation.Status.FAILED
    assert "exit code 127" in simulation.failure_reason
    assert "/nonexistent/train" in simulation.failure_reason


def test_cancel_sends_sigterm_within_a_heartbeat_and_the_machine_takes_the_next_run_after_exit(
    server, agents, owner, owner_api, machine, machine_token, tmp_path
):
    marks = tmp_path / "marks"
    trap = script(
        tmp_path,
        "trap.py",
        f"""
        import signal, sys, time
        def on_term(*_):
            open({str(marks)!r}, "a").write(f"term {{time.time()}}\\n")
            time.sleep(1.0)  # cleaning up: the machine is not free yet
            open({str(marks)!r}, "a").write(f"exit {{time.time()}}\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """,
    )
    simulation = simulation_running(owner, machine, [PYTHON, str(trap)])
    agents(server.url, machine_token)
    wait_for(lambda: ("stdout", "ready") in _log_text(simulation), "the command to start")
    cancelled_at = time.time()
    assert owner_api.post(f"/simulations/{simulation.pk}/cancel").status_code == 200
    wait_for(lambda: marks.exists() and "exit" in marks.read_text(), "the command to exit")
    term_at = float(marks.read_text().split()[1])
    assert term_at - cancelled_at <= HEARTBEAT + 1.0
    # The next simulation pinned to the machine starts only once the first command is gone.
    done = script(tmp_path, "done.py", "print('next')\n")
    following = simulation_running(owner, machine, [PYTHON, str(done)])
    assert _final(following).status == Simulation.Status.FINISHED
    exited_at = float(marks.read_text().split()[3])
    assert following.started_at.timestamp() >= exited_at


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(
    server, agents, owner, owner_api, machine, machine_token, tmp_path
):
    stubborn = script(
        tmp_path,
        "stubborn.py",
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """,
    )
    simulation = simulation_running(owner, machine, [PYTHON, str(stubborn)])
    agent = agents(server.url, machine_token)
    wait_for(lambda: ("stdout", "ready") in _log_text(simulation), "the command to start")
    owner_api.post(f"/simulations/{simulation.pk}/cancel")
    wait_for(lambda: "grace over, SIGKILL" in agent.output(), "the SIGKILL")
    wait_for(lambda: not (agent_state(agent)).exists(), "the agent to let the run go")


def agent_state(agent):
    return agent.log.with_name("state") / "current.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_agent_killed_mid_run_adopts_its_still_running_command_when_restarted(
    server, agents, owner, machine, machine_token, tmp_path
):
    train = script(
        tmp_path,
        "train.py",
        """
        import time, simsched_agent
        with simsched_agent.init() as run:
            for step in range(400):
                run.log(step, loss=1.0 / (step + 1))
                if step % 50 == 0:
                    print(f"step {step}", flush=True)
                time.sleep(0.01)
        """,
    )
    simulation = simulation_running(owner, machine, [PYTHON, str(train)])
    agent = agents(server.url, machine_token)
    wait_for(lambda: ("stdout", "step 50") in _log_text(simulation), "the run to be underway")
    state = json.loads(agent_state(agent).read_text())
    agent.kill()
    assert _pid_alive(state["pid"])  # the command lives on in its own process group
    assert _status(simulation) == Simulation.Status.RUNNING
    restarted = agents(server.url, machine_token)
    assert _final(simulation).status == Simulation.Status.FINISHED, simulation.failure_reason
    assert "adopting pid" in restarted.output()
    assert sorted(simulation.points.values_list("step", flat=True)) == list(range(400))
    lines = [line for _, line in _log_text(simulation)]
    assert lines == [f"step {s}" for s in range(0, 400, 50)]  # each once, in order
    assert _machine_status(machine) == Machine.Status.AVAILABLE


def test_a_command_that_ended_while_its_agent_was_down_is_reported_on_restart(
    server, agents, owner, machine, machine_token, tmp_path
):
    go = tmp_path / "go"
    waits = script(
        tmp_path,
        "waits.py",
        f"""
        import os, sys, time
        print("waiting", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        print("gave up", file=sys.stderr)
        sys.exit(4)
        """,
    )
    simulation = simulation_running(owner, machine, [PYTHON, str(waits)])
    agent = agents(server.url, machine_token)
    wait_for(lambda: ("stdout", "waiting") in _log_text(simulation), "the command to start")
    pid = json.loads(agent_state(agent).read_text())["pid"]
    agent.kill()
    go.touch()
    wait_for(lambda: not _pid_alive(pid), "the command to end")
    agents(server.url, machine_token)
    assert _final(simulation).status == Simulation.Status.FAILED
    assert "exit code 4" in simulation.failure_reason and "gave up" in simulation.failure_reason
    assert _machine_status(machine) == Machine.Status.AVAILABLE


def test_a_running_simulation_with_nothing_on_the_machine_is_failed_when_the_agent_starts(
    server, agents, owner, machine, machine_token, tmp_path
):
    sleeper = script(
        tmp_path, "sleeper.py", "import time\nprint('up', flush=True)\ntime.sleep(600)\n"
    )
    simulation = simulation_running(owner, machine, [PYTHON, str(sleeper)])
    agent = agents(server.url, machine_token)
    wait_for(lambda: ("stdout", "up") in _log_text(simulation), "the command to start")
    pid = json.loads(agent_state(agent).read_text())["pid"]
    agent.kill()
    os.killpg(pid, signal.SIGKILL)  # the machine rebooted: nothing of the run is left
    agent_state(agent).unlink()
    agents(server.url, machine_token)
    assert _final(simulation).status == Simulation.Status.FAILED
    assert "found no process" in simulation.failure_reason
    assert _machine_status(machine) == Machine.Status.AVAILABLE


def test_a_second_attempt_numbers_its_lines_after_the_first_attempts(
    server, agents, owner, machine, machine_token, tmp_path
):
    from simulations.logs import LogInput, log_lines_append

    hello = script(tmp_path, "hello.py", "print('second attempt')\n")
    simulation = simulation_running(owner, machine, [PYTHON, str(hello)])
    earlier = [LogInput(s, "stdout", f"first attempt {s}") for s in range(5)]
    log_lines_append(simulation_id=simulation.pk, lines=earlier)
    agents(server.url, machine_token)
    assert _final(simulation).status == Simulation.Status.FINISHED
    lines = list(
        LogLine.objects.filter(simulation=simulation).order_by("seq").values_list("seq", "line")
    )
    assert lines[-1] == (5, "second attempt") and len(lines) == 6


def test_lines_wait_for_their_first_number_while_the_server_cannot_give_it(
    server, owner, machine, machine_token, tmp_path
):
    """The agent could start the run but not ask how many lines an earlier attempt stored:
    it sends nothing until it knows, then numbers this attempt's lines after those."""
    from simsched_agent._machine import MachineAgent, _LogShipper

    from simulations.logs import LogInput, log_lines_append
    from tests.servers import free_port

    simulation = simulation_running(owner, machine, [PYTHON, "-c", "pass"])
    earlier = [LogInput(s, "stdout", f"first attempt {s}") for s in range(3)]
    log_lines_append(simulation_id=simulation.pk, lines=earlier)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stdout.log").write_text("second attempt 0\nsecond attempt 1\n")

    away = MachineAgent(f"http://127.0.0.1:{free_port()}", machine_token, state_dir=tmp_path)
    away.state = {"simulation_id": simulation.pk, "seq": away._next_log_seq(simulation.pk)}
    assert away.state["seq"] is None
    assert _LogShipper(away, simulation.pk, run_dir, away.state).ship(final=True) is False
    assert len(_log_text(simulation)) == 3

    back = MachineAgent(server.url, machine_token, state_dir=tmp_path)
    back.state = away.state  # the same run, once the server answers
    assert _LogShipper(back, simulation.pk, run_dir, back.state).ship(final=True) is True

    lines = list(
        LogLine.objects.filter(simulation=simulation).order_by("seq").values_list("seq", "line")
    )
    assert lines[3:] == [(3, "second attempt 0"), (4, "second attempt 1")]
    assert back.state["seq"] == 5


def test_a_preempted_command_is_stopped_once_and_the_run_requeued_at_once(
    server, agents, owner, machine, machine_token, tmp_path
):
    """The heartbeat says stop for a preemption; the command exits on SIGTERM (0, as a
    checkpoint-and-exit handler does): the agent reports fail, which requeues the run now
    (not after its preempt_grace), and never launches the stopped command again."""
    from simulations.services import ERR_PREEMPTED, simulation_preempt
    from tests.factories import make_simulation

    starts = tmp_path / "starts"
    trap = script(
        tmp_path,
        "trap.py",
        f"""
        import signal, sys, time
        open({str(starts)!r}, "a").write("start\\n")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """,
    )
    simulation = simulation_running(
        owner, machine, [PYTHON, str(trap)], preemptible=True, preempt_grace=600
    )
    agents(server.url, machine_token)
    wait_for(lambda: ("stdout", "ready") in _log_text(simulation), "the command to start")
    waiter = make_simulation(
        owner=owner,
        priority=10,
        command=[PYTHON, "-c", "print('waiter'); import time; time.sleep(60)"],
    )
    assert simulation_preempt(simulation=simulation, waiting=waiter) is not None
    wait_for(lambda: _status(simulation) == Simulation.Status.PENDING, "the run to be requeued")
    assert simulation.preemptions == 1 and simulation.failure_reason == ERR_PREEMPTED
    # The machine went to the waiter, and the preempted command was not launched again.
    wait_for(lambda: ("stdout", "waiter") in _log_text(waiter), "the waiter to run")
    assert starts.read_text() == "start\n"


def test_a_progress_bar_redrawn_with_carriage_returns_is_one_line_and_costs_no_other_line(
    server, agents, owner, machine, machine_token, tmp_path
):
    """tqdm's default: a bar on stderr redrawn 1,500 times with "\\r". A terminal shows one
    line, its last state; so does the log, and the stdout lines around it all arrive."""
    bar = script(
        tmp_path,
        "bar.py",
        """
        import sys
        print("epoch 1 starting", flush=True)
        for i in range(1500):
            sys.stderr.write(f"\\r{i + 1:4d}/1500 [00:01<00:20, 45.2it/s]")
        sys.stderr.write("\\n")
        sys.stderr.flush()
        sys.stdout.write("crlf line\\r\\n")
        print("epoch 1 done", flush=True)
        """,
    )
    simulation = simulation_running(owner, machine, [PYTHON, str(bar)])
    agent = agents(server.url, machine_token)
    assert _final(simulation).status == Simulation.Status.FINISHED, simulation.failure_reason
    wait_for(lambda: len(_log_text(simulation)) == 4, "the four lines")
    assert sorted(_log_text(simulation)) == sorted(
        [
            ("stdout", "epoch 1 starting"),
            ("stdout", "crlf line"),
            ("stdout", "epoch 1 done"),
            ("stderr", "1500/1500 [00:01<00:20, 45.2it/s]"),
        ]
    )
    assert "refused" not in agent.output()


def test_no_window_of_output_exceeds_the_servers_lines_per_request_whatever_the_bytes(
    server, owner, machine, machine_token, tmp_path, caplog
):
    """Every separator str.splitlines() knows, thousands of them, and thousands of short
    lines on both streams: each request stays within the server's limit, none is refused,
    and every "\\n" makes exactly one line."""
    from simsched_agent._machine import MAX_LINES_PER_REQUEST, MachineAgent, _LogShipper

    simulation = simulation_running(owner, machine, [PYTHON, "-c", "pass"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    others = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    stdout = ("x" + others * 300 + "y\n") * 3 + "line\n" * 2500
    stderr = "\n" * 1200 + "\r\n" * 1200 + ("a\rb" * 2000) + "no newline"
    (run_dir / "stdout.log").write_text(stdout)
    (run_dir / "stderr.log").write_text(stderr)
    agent = MachineAgent(server.url, machine_token, state_dir=tmp_path / "state")
    agent.state = {"simulation_id": simulation.pk, "seq": 0}
    shipper = _LogShipper(agent, simulation.pk, run_dir, agent.state)
    sent, call = [], agent.call

    def counting(method, path, body=None):
        if body:
            sent.append(len(body["lines"]))
        return call(method, path, body)

    agent.call = counting
    with caplog.at_level("WARNING", logger="simsched_agent.machine"):
        while shipper.ship(final=True):
            pass
    assert sent and max(sent) <= MAX_LINES_PER_REQUEST
    assert "refused" not in caplog.text
    stored = _log_text(simulation)
    assert len([1 for stream, _ in stored if stream == "stdout"]) == stdout.count("\n")
    assert len([1 for stream, _ in stored if stream == "stderr"]) == stderr.count("\n") + 1
    assert stored[-1] == ("stderr", "bno newline")


def test_a_restarted_agent_leaves_alone_a_process_group_that_reuses_its_commands_pid(
    server, agents, owner, machine, machine_token, tmp_path
):
    """The agent was down long enough for its command's launcher to end and the pid to go
    to an unrelated process-group leader (the state file names that process, with another
    start time): the run is reported as ended, and the unrelated group gets no signal."""
    import subprocess

    from simulations.services import simulation_start

    simulation = simulation_running(owner, machine, ["true"])
    simulation_start(simulation=simulation)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        state_dir = tmp_path / "state"
        run_dir = state_dir / f"simulation-{simulation.pk}"
        run_dir.mkdir(parents=True)
        (run_dir / "stdout.log").write_bytes(b"")
        (run_dir / "stderr.log").write_bytes(b"")
        (state_dir / "current.json").write_text(
            json.dumps(
                {
                    "simulation_id": simulation.pk,
                    "pid": bystander.pid,
                    "start_time": "1",  # the launcher's, long gone
                    "run_dir": str(run_dir),
                    "seq": 0,
                }
            )
        )
        agent = agents(server.url, machine_token)
        assert _final(simulation).status == Simulation.Status.FAILED
        assert "ended while the agent was down" in simulation.failure_reason
        wait_for(lambda: not agent_state(agent).exists(), "the agent to forget the run")
        assert bystander.poll() is None, f"killed ({bystander.returncode})"
        assert _machine_status(machine) == Machine.Status.AVAILABLE
    finally:
        bystander.kill()
        bystander.wait()


def test_the_default_state_dir_is_the_same_for_every_spelling_of_the_server(tmp_path):
    from simsched_agent._machine import default_state_dir

    spellings = ["http://h:8000", "http://h:8000/", "HTTP://H:8000/", " http://h:8000 "]
    assert len({default_state_dir(url, "token") for url in spellings}) == 1
    assert default_state_dir("http://h:80/", "t") == default_state_dir("http://h", "t")
    assert default_state_dir("http://h:8000", "t") != default_state_dir("http://h:8001", "t")
    assert default_state_dir("http://h/a/", "t") != default_state_dir("http://h/b", "t")


def test_an_agent_restarted_with_a_trailing_slash_in_its_url_adopts_its_command(
    server, owner, machine, machine_token, tmp_path
):
    """Without --state-dir the state dir is found from the URL: `http://host:port/` is the
    same server as `http://host:port`, so the restarted agent adopts the running command
    instead of failing the run while the command still runs."""
    import subprocess

    from tests.servers import BIN, REPO

    go = tmp_path / "go"
    waits = script(
        tmp_path,
        "waits.py",
        f"""
        import os, time
        print("up", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        """,
    )
    simulation = simulation_running(owner, machine, [PYTHON, str(waits)])
    env = {**os.environ, "SIMSCHED_TOKEN": machine_token, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    log = tmp_path / "agent.log"

    def start(url):
        return subprocess.Popen(
            [str(BIN / "simsched-agent"), "--url", url, "--heartbeat", str(HEARTBEAT)]
            + ["--claim-interval", "0.2", "--grace", "3", "-v"],
            cwd=REPO,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    first = start(server.url)
    try:
        wait_for(lambda: ("stdout", "up") in _log_text(simulation), "the command to start")
        state = next((tmp_path / "xdg").rglob("current.json"))
        pid = json.loads(state.read_text())["pid"]
    finally:
        first.kill()
        first.wait()
    second = start(server.url + "/")
    try:
        wait_for(lambda: "adopting pid" in log.read_text(), "the restarted agent to adopt")
        go.touch()
        assert _final(simulation).status == Simulation.Status.FINISHED, simulation.failure_reason
        wait_for(lambda: not _pid_alive(pid), "the command to be gone")
    finally:
        second.terminate()
        second.wait(15)
        if _pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_the_last_lines_of_a_command_that_ends_in_a_long_outage_are_shipped_when_it_ends(
    server, agents, owner, machine, machine_token, tmp_path
):
    """The command ends while the server is away longer than FINAL_SHIP_SECONDS: the agent
    keeps the unshipped range and ships it once the server is back, before forgetting it."""
    from simsched_agent._machine import FINAL_SHIP_SECONDS

    go = tmp_path / "go"
    waits = script(
        tmp_path,
        "waits.py",
        f"""
        import os, sys, time
        print("before", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        print("RuntimeError: CUDA out of memory", file=sys.stderr, flush=True)
        sys.exit(2)
        """,
    )
    simulation = simulation_running(owner, machine, [PYTHON, str(waits)])
    agent = agents(server.url, machine_token)
    wait_for(lambda: ("stdout", "before") in _log_text(simulation), "the command to start")
    server.stop()
    connection.close()
    go.touch()
    time.sleep(FINAL_SHIP_SECONDS + 3)  # the outage outlasts the agent's last tries
    assert "last log lines not shipped" in agent.output()
    back = start_daphne({"DATABASE_URL": database_url(connection.settings_dict)}, port=server.port)
    try:
        assert _final(simulation).status == Simulation.Status.FAILED
        assert "CUDA out of memory" in simulation.failure_reason
        wait_for(lambda: not agent_state(agent).exists(), "the agent to forget the run")
        assert _log_text(simulation) == [
            ("stdout", "before"),
            ("stderr", "RuntimeError: CUDA out of memory"),
        ]
    finally:
        back.stop()
