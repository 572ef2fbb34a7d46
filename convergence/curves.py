"""Realistic training loss curves, for the seed data, the demo agents and simulated runs."""

import math
import random


class LossCurve:
    """Exponential decay towards a floor, with noise, a plateau and rare spikes; deterministic
    for a given seed so a curve can be resumed or reproduced."""

    def __init__(self, seed: int, *, total_steps: int = 10_000):
        rng = random.Random(seed)
        self.initial = rng.uniform(2.0, 8.0)
        self.floor = rng.uniform(0.02, 0.4)
        self.decay = total_steps / rng.uniform(3.0, 8.0)
        self.noise = rng.uniform(0.01, 0.05)
        self.plateau_start = int(total_steps * rng.uniform(0.2, 0.5))
        self.plateau_length = int(total_steps * rng.uniform(0.05, 0.15))
        self.seed = seed

    def loss(self, step: int) -> float:
        effective = step
        if step > self.plateau_start:
            effective = max(self.plateau_start, step - self.plateau_length)
        clean = self.floor + (self.initial - self.floor) * math.exp(-effective / self.decay)
        rng = random.Random(self.seed * 1_000_003 + step)
        value = clean * (1 + rng.gauss(0, self.noise))
        if rng.random() < 0.002:  # a loss spike, as real runs have
            value *= rng.uniform(1.5, 3.0)
        return max(value, 1e-6)
