"""What a selection kept, per source: the terminal table, the histogram and the dataset card's facts.

One `SelectionReport` feeds all three, so the card never says something the terminal did not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mprm_hf.fileio import save_figure_atomic
from mprm_hf.selection import scores as scoring


def label_balance(steps: int, positive: int) -> dict[str, Any]:
    """{steps, positive, negative, positive_fraction} of hard step labels (positive iff MC score > 0)."""
    steps, positive = int(steps), int(positive)
    return {
        "steps": steps,
        "positive": positive,
        "negative": steps - positive,
        "positive_fraction": round(positive / steps, 4) if steps else 0.0,
    }


@dataclass
class SourceRow:
    source: str
    total: int  # rollouts the selector could rank (at least one numeric MC score)
    kept: int  # rollouts in the output
    steps_before: int
    positive_before: int
    steps_after: int
    positive_after: int
    dropped_at_conversion: int = 0


@dataclass
class SelectionReport:
    """Per-source counts and label balance, plus the per-rollout scores for the histogram."""

    selector: str
    params: dict[str, Any]
    rows: list[SourceRow]
    n_scored: np.ndarray = field(repr=False)  # the score table's columns, for the histogram
    n_pos: np.ndarray = field(repr=False)
    sum_pos: np.ndarray = field(repr=False)
    bis_alpha: float = 0.05
    kept_mask: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=bool))
    order_note: str = "file order"
    notes: list[str] = field(default_factory=list)  # skipped lines and dropped rollouts, by reason and place

    @property
    def p_pos(self) -> np.ndarray:
        return scoring.p_pos(self.n_pos, self.n_scored)

    @property
    def reliability(self) -> np.ndarray:
        return scoring.reliability(self.sum_pos, self.n_pos)

    @property
    def bis(self) -> np.ndarray:
        return scoring.bis(self.n_scored, self.n_pos, self.sum_pos, self.bis_alpha)

    @property
    def n_total(self) -> int:
        return sum(row.total for row in self.rows)

    @property
    def n_kept(self) -> int:
        return sum(row.kept for row in self.rows)

    def balance_before(self) -> dict[str, Any]:
        return label_balance(
            sum(r.steps_before for r in self.rows), sum(r.positive_before for r in self.rows)
        )

    def balance_after(self) -> dict[str, Any]:
        return label_balance(sum(r.steps_after for r in self.rows), sum(r.positive_after for r in self.rows))

    def per_source(self) -> list[dict[str, Any]]:
        return [
            {
                "source": row.source,
                "kept": row.kept,
                "total": row.total,
                "positive_fraction_before": label_balance(row.steps_before, row.positive_before)[
                    "positive_fraction"
                ],
                "positive_fraction_after": label_balance(row.steps_after, row.positive_after)[
                    "positive_fraction"
                ],
            }
            for row in self.rows
        ]

    def table(self) -> str:
        """The per-source table printed in the terminal."""
        width = max([len("source"), *(len(row.source) for row in self.rows)])
        header = f"{'source':<{width}}  {'kept':>8} / {'total':<8} {'kept %':>7}  {'pos. before':>11}  {'pos. after':>10}"
        lines = [header, "-" * len(header)]

        def line(name: str, kept: int, total: int, before: dict, after: dict) -> str:
            share = 100.0 * kept / total if total else 0.0
            return (
                f"{name:<{width}}  {kept:>8} / {total:<8} {share:>6.1f}%  "
                f"{before['positive_fraction']:>11.3f}  {after['positive_fraction']:>10.3f}"
            )

        for row in self.rows:
            before = label_balance(row.steps_before, row.positive_before)
            after = label_balance(row.steps_after, row.positive_after)
            lines.append(line(row.source, row.kept, row.total, before, after))
        lines.append("-" * len(header))
        lines.append(line("all", self.n_kept, self.n_total, self.balance_before(), self.balance_after()))
        dropped = sum(row.dropped_at_conversion for row in self.rows)
        if dropped:
            lines.append(f"{dropped} chosen rollouts were dropped at conversion, not replaced.")
        lines += self.notes
        before, after = self.balance_before(), self.balance_after()
        lines.append(
            f"steps: {before['steps']} before ({before['negative']} negative), "
            f"{after['steps']} after ({after['negative']} negative); output order: {self.order_note}"
        )
        return "\n".join(lines)

    def histogram(self, path: str | Path) -> Path:
        """BIS, p_pos and reliability of kept vs dropped rollouts, one panel each (matplotlib Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        panels = [
            (f"BIS (alpha={self.bis_alpha:g})", self.bis),
            ("p_pos (share of positive steps)", self.p_pos),
            ("reliability R (mean positive MC score)", self.reliability),
        ]
        figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for axis, (title, values) in zip(axes, panels, strict=True):
            finite = np.isfinite(values)
            kept, dropped = values[finite & self.kept_mask], values[finite & ~self.kept_mask]
            both = values[finite]
            bins = (
                np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, 31)
                if len(both)
                else 10
            )
            axis.hist(dropped, bins=bins, alpha=0.6, label=f"dropped ({len(dropped)})", color="#999999")
            axis.hist(kept, bins=bins, alpha=0.8, label=f"kept ({len(kept)})", color="#d95f02")
            axis.set_title(title, fontsize=10)
            axis.set_yscale("log")
            axis.legend(fontsize=8)
        figure.suptitle(
            f"selector {self.selector}: {self.n_kept} of {self.n_total} rollouts kept", fontsize=11
        )
        figure.tight_layout()
        save_figure_atomic(figure, path, dpi=110)
        plt.close(figure)
        return path

    def card_info(
        self,
        *,
        command: str,
        source_corpus: str,
        source_revision: str | None,
        histogram_path: str | None,
        pretty_name: str | None = None,
        license: str | None = None,
        tags: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The keyword arguments of `mprm_hf.hub.render_dataset_card`."""
        return {
            "pretty_name": pretty_name or f"VisualPRM400K subset ({self.selector}, {self.n_kept} rollouts)",
            "command": command,
            "selector": self.selector,
            "selector_params": dict(self.params),
            "source_corpus": source_corpus,
            "source_revision": source_revision,
            "per_source": self.per_source(),
            "label_balance_before": self.balance_before(),
            "label_balance_after": self.balance_after(),
            "n_rollouts_kept": self.n_kept,
            "n_rollouts_total": self.n_total,
            "histogram_path": histogram_path,
            "license": license,
            "tags": ["process-reward-model", "visualprm400k", "data-selection", self.selector, *tags],
        }
