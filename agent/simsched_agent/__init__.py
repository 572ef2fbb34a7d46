"""simsched_agent: report a simulation's metrics from training code, and run simulations on a
machine (`simsched-agent --url URL --token MACHINE_TOKEN`).

    import simsched_agent

    with simsched_agent.init() as run:            # reads what the agent put in the environment
        for step in range(run.resume_step or 0, steps):
            loss = train_one_step()
            run.log(step, loss=loss, lr=scheduler.get_last_lr()[0])
            run.log(step, {"val/loss": val_loss})  # names that are not identifiers

`log()` never blocks the loop and never raises for a server problem; see `Run`. The standard
library only; nothing here imports the server's code.
"""

import logging
import os
import tempfile
from pathlib import Path

from simsched_agent._run import Run

__all__ = ["Run", "init"]
__version__ = "0.1.0"

logger = logging.getLogger("simsched_agent")


def init(
    url: str | None = None,
    token: str | None = None,
    simulation_id: int | None = None,
    *,
    spool_dir: str | os.PathLike | None = None,
    flush_timeout: float | None = None,
) -> Run:
    """A `Run` for one simulation. Unset arguments come from the environment the machine agent
    gives the training process: SIMSCHED_URL, SIMSCHED_TOKEN, SIMSCHED_SIMULATION_ID,
    SIMSCHED_SPOOL_DIR (default: a `simsched-spool` folder in the system's temporary
    directory), SIMSCHED_FLUSH_TIMEOUT (seconds finish() may take, default 30) and
    SIMSCHED_RESUME_STEP (the step to resume from, as `run.resume_step`, or None).

    Raises ValueError when url, token or simulation id is missing: that is a setup mistake,
    found before training starts rather than hours later."""
    env = os.environ
    url = url or env.get("SIMSCHED_URL")
    token = token or env.get("SIMSCHED_TOKEN")
    raw_id = simulation_id if simulation_id is not None else env.get("SIMSCHED_SIMULATION_ID")
    missing = [
        name
        for name, value in (("url", url), ("token", token), ("simulation_id", raw_id))
        if not value
    ]
    if missing:
        raise ValueError(
            f"simsched_agent.init: no {', '.join(missing)} (pass them, or run under "
            "simsched-agent, which sets SIMSCHED_URL, SIMSCHED_TOKEN and SIMSCHED_SIMULATION_ID)"
        )
    spool = (
        spool_dir or env.get("SIMSCHED_SPOOL_DIR") or Path(tempfile.gettempdir(), "simsched-spool")
    )
    timeout = (
        flush_timeout if flush_timeout is not None else float(env.get("SIMSCHED_FLUSH_TIMEOUT", 30))
    )
    resume = env.get("SIMSCHED_RESUME_STEP")
    return Run(
        url=url,
        token=token,
        simulation_id=int(raw_id),
        spool_dir=spool,
        flush_timeout=timeout,
        resume_step=int(resume) if resume not in (None, "") else None,
    )
