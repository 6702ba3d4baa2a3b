"""Counted, located reports of every malformed thing a loader or converter met.

Real corpora are messy (truncated lines, empty steps, scores written as text). A loader must neither
crash on them nor drop them silently, so each problem is recorded here with its reason, what was done
about it ("skipped" the record, or "kept" it with a default / null) and the first few locations
(file, line, field) so that a user can open the file and look.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mprm_hf.fileio import write_text_atomic

Action = Literal["skipped", "kept", "dropped"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Issue:
    """One located problem: `file:line: field 'x': reason (detail)`."""

    file: str
    line: int | None
    field: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        what = f"field '{self.field}': {self.reason}" if self.field else self.reason
        return f"{where}: {what}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class LoadReport:
    """Counts of problems by reason, the action taken for each reason, and located examples.

    `records_read` counts non-blank lines (or input rows), `records_kept` the rows that reached the
    dataset. `steps` counts, per reason, the steps of the records that reason removed (converters only).
    """

    SKIPPED_WORD = "skipped"

    name: str
    max_examples: int = 5
    records_read: int = 0
    records_kept: int = 0
    counts: Counter = field(default_factory=Counter)
    steps: Counter = field(default_factory=Counter)
    actions: dict[str, str] = field(default_factory=dict)
    examples: list[Issue] = field(default_factory=list)

    def add(
        self,
        file: str,
        line: int | None,
        field: str,
        reason: str,
        *,
        action: Action,
        detail: str = "",
        steps: int = 0,
    ) -> None:
        """Count one occurrence of `reason`; keep its location if fewer than `max_examples` are kept."""
        self.counts[reason] += 1
        self.actions[reason] = action
        if steps:
            self.steps[reason] += steps
        if self.counts[reason] <= self.max_examples:
            self.examples.append(Issue(file, line, field, reason, _short(detail)))

    @property
    def records_skipped(self) -> int:
        return self.records_read - self.records_kept

    @property
    def total_issues(self) -> int:
        return sum(self.counts.values())

    def count(self, reason: str) -> int:
        return self.counts.get(reason, 0)

    def examples_for(self, reason: str) -> list[Issue]:
        return [issue for issue in self.examples if issue.reason == reason]

    def fatal(self, what: str) -> str:
        """`what` (e.g. "no usable record") with the problems that made it so first: the reasons that
        removed records (skipped or dropped), most frequent first, then the benign notes (a default
        used, a value converted) after them; ends an error message that says nothing was usable."""
        removing = [reason for reason, action in self.actions.items() if action != "kept"]
        ranked = sorted(removing, key=lambda reason: -self.counts[reason])
        first = [self.examples_for(reason)[0] for reason in ranked if self.examples_for(reason)]
        notes = [issue for issue in self.examples if issue.reason not in removing]
        parts = [f"{what} ({self.total_issues} problems"]
        if first:
            parts.append(f"; first problem: {first[0]}")
        if notes:
            parts.append(f"; also noted: {notes[0]}")
        return "".join(parts) + ")"

    def merge(self, other: LoadReport) -> LoadReport:
        """Add another report's counts into this one (per-file reports into the corpus report)."""
        self.records_read += other.records_read
        self.records_kept += other.records_kept
        self.counts.update(other.counts)
        self.steps.update(other.steps)
        self.actions.update(other.actions)
        for issue in other.examples:
            if len(self.examples_for(issue.reason)) < self.max_examples:
                self.examples.append(issue)
        return self

    def summary(self) -> str:
        """A small fixed-width table: one row per reason, then the first located examples."""
        head = (
            f"{self.name}: {self.records_read} records read, {self.records_kept} kept, "
            f"{self.records_skipped} {self.SKIPPED_WORD}"
        )
        if not self.counts:
            return head + "; no problems found"
        width = max(len("reason"), *(len(r) for r in self.counts))
        rows = [head, f"  {'reason':<{width}}  {'action':<7}  {'count':>7}  {'steps':>7}"]
        for reason, n in sorted(self.counts.items(), key=lambda item: (-item[1], item[0])):
            steps = str(self.steps[reason]) if self.steps.get(reason) else ""
            rows.append(f"  {reason:<{width}}  {self.actions[reason]:<7}  {n:>7}  {steps:>7}")
        rows.append("  first examples:")
        rows.extend(f"    {issue}" for issue in self.examples)
        return "\n".join(rows)

    def log(self, log: logging.Logger | None = None) -> None:
        """Log the summary: INFO when clean, WARNING when anything was skipped or flagged."""
        (log or logger).log(logging.WARNING if self.counts else logging.INFO, "%s", self.summary())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_examples": self.max_examples,
            "records_read": self.records_read,
            "records_kept": self.records_kept,
            "counts": dict(self.counts),
            "steps": dict(self.steps),
            "actions": self.actions,
            "examples": [issue.__dict__ for issue in self.examples],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadReport:
        return cls(
            name=data["name"],
            max_examples=data["max_examples"],
            records_read=data["records_read"],
            records_kept=data["records_kept"],
            counts=Counter(data["counts"]),
            steps=Counter(data["steps"]),
            actions=dict(data["actions"]),
            examples=[Issue(**issue) for issue in data["examples"]],
        )

    def save(self, path: str | Path) -> None:
        """Write atomically, so a reader never sees half a report (parallel loaders write side by side)."""
        write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> LoadReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _short(text: str, limit: int = 80) -> str:
    """Examples quote the offending value; a whole response would drown the table."""
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."
