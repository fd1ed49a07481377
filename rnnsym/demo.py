"""``rnnsym demo apple``: the lecture slides' sentence learned with generated kernels only.

The sentence "This is an apple ." is five 1-of-K vectors, |x(1)⟩ = |This⟩, …, |x(5)⟩ = |.⟩, as
in the slides. An Elman cell with softmax cross-entropy (*Deep Learning* eqs. 10.18–10.28,
integer class targets) learns next-token prediction: input x(t), target the index of token
t + 1. Plain gradient descent, θ ← θ − ε ∇_θ L, uses the generated kernel's gradients; the
trained cell then generates the sentence from "This", feeding its own most likely token back
(:func:`rnnsym.generate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .kernel import compile_cell
from .models.architectures import elman_softmax
from .models.compose import generate

__all__ = ["SENTENCE", "ApplePlot", "DemoResult", "apple"]

SENTENCE = ("This", "is", "an", "apple", ".")


@dataclass
class ApplePlot:
    """Where the loss-curve plot went, or why there is none."""

    path: Path | None
    note: str


@dataclass
class DemoResult:
    """The loss after every gradient-descent step and the generated sentence."""

    losses: list[float]
    predicted: list[str]
    params: dict = field(repr=False)

    @property
    def learned(self) -> bool:
        return tuple(self.predicted) == SENTENCE

    def curve(self, width: int = 60, height: int = 12) -> str:
        """The loss curve as text (log scale), one column per group of steps."""
        losses = np.log10(np.maximum(np.array(self.losses), 1e-300))
        columns = np.array_split(losses, min(width, len(losses)))
        values = np.array([c.mean() for c in columns])
        top, bottom = values.max(), values.min()
        span = max(top - bottom, 1e-12)
        rows = []
        for r in range(height):
            level = top - span * r / (height - 1)
            label = f"{10**level:9.2e} |" if r in (0, height - 1) else " " * 10 + "|"
            marks = "".join(
                "*" if abs(v - level) <= span / (2 * (height - 1)) else " " for v in values
            )
            rows.append(label + marks)
        rows.append(" " * 10 + "+" + "-" * len(values))
        rows.append(" " * 11 + f"step 1 .. {len(self.losses)} (loss, log scale)")
        return "\n".join(rows)


def apple(steps: int = 400, lr: float = 0.5, hidden: int = 8, seed: int = 0) -> DemoResult:
    """Train the Elman/softmax cell on the sentence by gradient descent and generate it."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if hidden < 1:
        raise ValueError(f"hidden must be at least 1, got {hidden}")
    K = len(SENTENCE)
    kernel = compile_cell(elman_softmax())
    eye = np.eye(K)
    tokens = np.arange(K)  # the sentence, as class indices
    inputs = {"x": eye[tokens[:-1]][:, None, :]}  # (T=4, B=1, K): |This>, |is>, |an>, |apple>
    targets = {"y": tokens[1:][:, None]}  # (4, 1): the index of the next token
    rng = np.random.default_rng(seed)
    params = {
        "W": rng.normal(0, 0.5 / np.sqrt(hidden), (hidden, hidden)),
        "U": rng.normal(0, 0.5, (hidden, K)),
        "b": np.zeros(hidden),
        "V": rng.normal(0, 0.5 / np.sqrt(hidden), (K, hidden)),
        "c": np.zeros(K),
    }
    losses = []
    for _ in range(steps):
        loss, grads = kernel.loss_and_grad(params, inputs, targets)
        losses.append(float(loss))
        for name, g in grads.items():  # plain gradient descent, δθ = −ε ∇θ L
            params[name] = params[name] - lr * g
    run = generate(
        kernel,
        params,
        steps=K - 1,
        feed={"x": ("o", "argmax")},
        start={"x": eye[tokens[0]][None]},
    )
    predicted = [SENTENCE[0]] + [SENTENCE[int(i)] for i in np.argmax(run["o"][:, 0], axis=-1)]
    return DemoResult(losses, predicted, params)


def save_plot(result: DemoResult, path: str | Path) -> ApplePlot:
    """Save the loss curve with matplotlib when it is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ApplePlot(None, 'matplotlib is not installed: no plot (pip install ".[plot]")')
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(np.arange(1, len(result.losses) + 1), result.losses)
    ax.set_xlabel("gradient-descent step")
    ax.set_ylabel("loss (softmax cross-entropy, summed over t)")
    ax.set_title('"This is an apple ." (rnnsym demo apple)')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return ApplePlot(path, f"loss curve saved to {path}")
