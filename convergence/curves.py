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


class TrainingSeries:
    """The other series a training run reports beside its loss, deterministic per seed:
    a noisier validation loss that improves more slowly and ends above the train loss, a
    learning rate that warms up linearly then decays on a cosine, and a gradient norm that
    shrinks with the loss and spikes now and then."""

    VAL_EVERY = 50  # steps between evaluations
    SCALAR_EVERY = 10  # steps between lr / grad_norm reports

    def __init__(self, loss: LossCurve, *, total_steps: int):
        rng = random.Random(loss.seed * 7 + 1)
        self.loss_curve = loss
        self.total = max(total_steps, 1)
        self.gap = rng.uniform(1.05, 1.25)  # validation ends above train
        self.peak_lr = rng.choice([1e-4, 3e-4, 6e-4, 1e-3])
        self.warmup = max(int(self.total * rng.uniform(0.02, 0.08)), 1)
        self.seed = loss.seed

    def values(self, step: int) -> dict[str, float]:
        values = {"loss": self.loss_curve.loss(step)}
        rng = random.Random(self.seed * 999_983 + step)
        if step % self.SCALAR_EVERY == 0:
            values["lr"] = self.lr(step)
            norm = 0.5 + 4.0 * values["loss"] / max(self.loss_curve.initial, 1e-6)
            norm *= 1 + rng.gauss(0, 0.1)
            if rng.random() < 0.01:
                norm *= rng.uniform(5, 20)
            values["grad_norm"] = max(norm, 1e-6)
        if step % self.VAL_EVERY == 0:
            slow = self.loss_curve.loss(int(step * 0.8))
            values["val/loss"] = max(slow * self.gap * (1 + rng.gauss(0, 0.04)), 1e-6)
        return values

    def lr(self, step: int) -> float:
        if step < self.warmup:
            return self.peak_lr * (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.peak_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
