"""A conformance run's result: one row per check, PASS / FAIL / SKIP with the reason.

The same rows are written three ways: a text line per row as it completes, a
JUnit XML file (for CI servers) and a Markdown table (for a vendor's report).
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Sequence

from attrs import frozen

from gateway.conformance.checks import Check

__all__ = ["Outcome", "Report", "Row", "junit_xml", "markdown", "text_line"]


class Outcome(enum.Enum):
    """What became of one check."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@frozen
class Row:
    """One check's outcome, why, and how long it took (seconds)."""

    check: Check
    outcome: Outcome
    reason: str
    seconds: float = 0.0

    @property
    def name(self) -> str:
        """The check's name, e.g. `uplink.carIn`."""
        return self.check.name


class Report:
    """The rows of one run, in the order the checks completed; listeners see each row as it comes.

    `finish` adds a SKIP row for every planned check that produced none, so a
    report always has one row per planned check.
    """

    def __init__(self, title: str, planned: Sequence[Check]) -> None:
        self.title = title
        self.planned = tuple(planned)
        self.rows: list[Row] = []
        self.listeners: list[Callable[[Row], object]] = []
        self._done: set[str] = set()

    def add(self, row: Row) -> None:
        """Record a row (once per check: a second row for the same check is ignored)."""
        if row.name in self._done:
            return
        self._done.add(row.name)
        self.rows.append(row)
        for listener in self.listeners:
            listener(row)

    def done(self, name: str) -> bool:
        """Whether the check `name` has its row."""
        return name in self._done

    def finish(self, reason: str = "not run") -> None:
        """Give every planned check without a row a SKIP row with `reason`."""
        for check in self.planned:
            if check.name not in self._done:
                self.add(Row(check, Outcome.SKIP, reason))

    def count(self, outcome: Outcome) -> int:
        """How many rows have `outcome`."""
        return sum(1 for row in self.rows if row.outcome is outcome)

    @property
    def passed(self) -> bool:
        """Whether no row failed: the run's exit code is 0 exactly then."""
        return self.count(Outcome.FAIL) == 0

    def summary(self) -> str:
        """One line: how many checks passed, failed and were skipped."""
        return (
            f"{len(self.rows)} checks: {self.count(Outcome.PASS)} passed, "
            f"{self.count(Outcome.FAIL)} failed, {self.count(Outcome.SKIP)} skipped"
        )


def text_line(row: Row) -> str:
    """The row as printed when it completes: outcome, check name, reason."""
    return f"{row.outcome.value:<4}  {row.name:<26}  {row.reason}".rstrip()


def junit_xml(report: Report, suite: str) -> bytes:
    """The report as JUnit XML: one testsuite named `suite`, one testcase per row.

    A FAIL is a `<failure>`, a SKIP a `<skipped>`, both with the reason as
    their message; a PASS carries its reason in `<system-out>`.
    """
    failures, skipped = report.count(Outcome.FAIL), report.count(Outcome.SKIP)
    total = sum(row.seconds for row in report.rows)
    counts = {
        "tests": str(len(report.rows)),
        "failures": str(failures),
        "errors": "0",
        "skipped": str(skipped),
        "time": f"{total:.3f}",
    }
    root = ElementTree.Element("testsuites", {"name": report.title, **counts})
    element = ElementTree.SubElement(root, "testsuite", {"name": suite, **counts})
    for row in report.rows:
        case = ElementTree.SubElement(
            element,
            "testcase",
            {"classname": f"{suite}.{row.check.group}", "name": row.name, "time": f"{row.seconds:.3f}"},
        )
        if row.outcome is Outcome.FAIL:
            failure = ElementTree.SubElement(case, "failure", {"message": row.reason, "type": "FAIL"})
            failure.text = f"{row.check.title} ({row.check.reference}): {row.reason}"
        elif row.outcome is Outcome.SKIP:
            ElementTree.SubElement(case, "skipped", {"message": row.reason})
        else:
            ElementTree.SubElement(case, "system-out").text = row.reason
    ElementTree.indent(root)
    xml: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml + b"\n"


def _cell(text: str) -> str:
    """Text made safe for a Markdown table cell."""
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def markdown(report: Report, heading: str, preface: Iterable[str] = ()) -> str:
    """The report as a Markdown document: a heading, the summary, a table of the rows."""
    lines = [f"# {heading}", "", *preface]
    if preface:
        lines.append("")
    lines += [
        f"**{report.summary()}** — {'no failures' if report.passed else 'FAILED'}",
        "",
        "| result | check | reference | reason |",
        "| --- | --- | --- | --- |",
    ]
    for row in report.rows:
        lines.append(
            f"| {row.outcome.value} | `{row.name}` | {_cell(row.check.reference)} | {_cell(row.reason)} |"
        )
    return "\n".join(lines) + "\n"
