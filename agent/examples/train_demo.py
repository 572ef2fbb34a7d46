"""A training loop that reports three series with simsched_agent: what `manage.py agents` runs.

    python train_demo.py --steps 1500 --rate 50 [--crash-at STEP] [--hang-at STEP]

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
    parser.add_argument("--rate", type=float, default=50.0, help="Steps per second.")
    parser.add_argument("--crash-at", type=int, default=None)
    parser.add_argument("--hang-at", type=int, default=None)
    args = parser.parse_args()
    with simsched_agent.init() as run:
        rng = random.Random(run.simulation_id)
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
            run.log(step, loss=loss, lr=lr)
            if step % 10 == 0:
                run.log(step, {"val/loss": loss * 1.1 + rng.gauss(0, 0.03)})
            if step % 250 == 0:
                print(f"step {step} loss {loss:.4f} lr {lr:.2e}", flush=True)
            if args.crash_at is not None and step >= args.crash_at:
                print(
                    "RuntimeError: CUDA error: an illegal memory access was encountered",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            if args.hang_at is not None and step >= args.hang_at:
                print("hanging (a deadlocked data loader)", file=sys.stderr, flush=True)
                time.sleep(10**6)
            delay = started + (step - first + 1) / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        print(f"done: {run.stats}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
