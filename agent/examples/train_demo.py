"""A training loop that reports three series with simsched_agent: what `manage.py agents` runs.

    python train_demo.py --steps 1500 --rate 50 [--crash-rate P] [--hang-rate P]

Prints progress to stdout and warnings to stderr (both end up in the simulation's log panel).
Resumes from SIMSCHED_RESUME_STEP when the agent passes one."""

import argparse
import math
import random
import sys
import time

import simsched_agent


def loss_at(step: int, steps: int, rng: random.Random) -> float:
    progress = step / max(steps, 1)
    return 0.05 + 3.0 * math.exp(-5 * progress) + rng.gauss(0, 0.02) * (1 - progress)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=50.0, help="Steps per second (0: no limit).")
    parser.add_argument("--series", default="loss,lr,val/loss", help="Which series to report.")
    parser.add_argument("--crash-rate", type=float, default=0.0, help="Chance this run crashes.")
    parser.add_argument("--hang-rate", type=float, default=0.0, help="Chance this run hangs.")
    args = parser.parse_args()
    with simsched_agent.init() as run:
        rng = random.Random(run.simulation_id)
        series = set(args.series.split(","))
        fate = rng.random()
        crash_at = hang_at = None
        if fate < args.crash_rate:
            crash_at = int(args.steps * rng.uniform(0.2, 0.8))
        elif fate < args.crash_rate + args.hang_rate:
            hang_at = int(args.steps * rng.uniform(0.2, 0.8))
        first = run.resume_step or 0
        print(
            f"training simulation {run.simulation_id} from step {first} to {args.steps}", flush=True
        )
        started = time.monotonic()
        for step in range(first, args.steps):
            loss = loss_at(step, args.steps, rng)
            lr = (
                3e-4
                * min(1.0, (step + 1) / 100)
                * 0.5
                * (1 + math.cos(math.pi * step / args.steps))
            )
            values = {"loss": loss, "lr": lr}
            if step % 10 == 0:
                values["val/loss"] = loss * 1.1 + rng.gauss(0, 0.03)
            run.log(step, {name: v for name, v in values.items() if name in series})
            if step % 250 == 0:
                print(f"step {step} loss {loss:.4f} lr {lr:.2e}", flush=True)
            if crash_at is not None and step >= crash_at:
                print(
                    "RuntimeError: CUDA error: an illegal memory access was encountered",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            if hang_at is not None and step >= hang_at:
                print("hanging (a deadlocked data loader)", file=sys.stderr, flush=True)
                time.sleep(10**6)
            if args.rate > 0:
                delay = started + (step - first + 1) / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        print(f"done: {run.stats}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
