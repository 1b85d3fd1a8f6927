"""The report: rows, the text line, JUnit XML and Markdown."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from gateway.conformance.checks import Check
from gateway.conformance.report import Outcome, Report, Row, junit_xml, markdown, text_line

LOGIN = Check("login.accepted", "login", "the account gets a token", "B.4.1")
CAR_IN = Check("uplink.carIn", "uplink", "carIn is answered", "B.6", "carIn")
IDLE = Check("idle.read", "idle", "closed after read_idle", "B.3.4")


def report() -> Report:
    """A report of three checks: one passed, one failed (with awkward characters), one skipped."""
    result = Report("cpmictl conformance platform", (LOGIN, CAR_IN, IDLE))
    result.add(Row(LOGIN, Outcome.PASS, "token issued for park P001", 0.25))
    result.add(Row(CAR_IN, Outcome.FAIL, 'answered 9010 字段无效: data.inTime <"yesterday"> | & more', 0.5))
    result.finish("not run: no --read-idle")
    return result


def test_finish_gives_every_planned_check_a_row_and_a_second_row_is_ignored() -> None:
    """A planned check without a row gets SKIP with the reason; a check's second row is dropped."""
    result = report()
    result.add(Row(LOGIN, Outcome.FAIL, "again"))
    assert [(row.name, row.outcome) for row in result.rows] == [
        ("login.accepted", Outcome.PASS),
        ("uplink.carIn", Outcome.FAIL),
        ("idle.read", Outcome.SKIP),
    ]
    assert result.rows[2].reason == "not run: no --read-idle"
    assert result.summary() == "3 checks: 1 passed, 1 failed, 1 skipped"
    assert not result.passed


def test_listeners_see_each_row_as_it_is_added() -> None:
    """Rows reach the listeners in completion order (that is how they are printed as they come)."""
    seen: list[str] = []
    result = Report("t", (LOGIN, CAR_IN))
    result.listeners.append(lambda row: seen.append(row.name))
    result.add(Row(CAR_IN, Outcome.PASS, ""))
    result.add(Row(LOGIN, Outcome.PASS, ""))
    assert seen == ["uplink.carIn", "login.accepted"]
    assert result.passed


def test_text_line_is_outcome_name_reason() -> None:
    """One printed row: the outcome, the check's name in a column, the reason."""
    line = text_line(Row(CAR_IN, Outcome.FAIL, "no answer"))
    assert line.split() == ["FAIL", "uplink.carIn", "no", "answer"]
    assert line.startswith("FAIL  uplink.carIn ")


def test_junit_counts_and_marks_each_row() -> None:
    """JUnit XML parses; the counts match; FAIL is <failure>, SKIP <skipped>, PASS says why in system-out."""
    root = ElementTree.fromstring(junit_xml(report(), "cpmi.platform"))
    assert root.tag == "testsuites" and root.get("name") == "cpmictl conformance platform"
    (suite,) = root.findall("testsuite")
    for element in (root, suite):
        counts = (
            element.get("tests"),
            element.get("failures"),
            element.get("skipped"),
            element.get("errors"),
        )
        assert counts == ("3", "1", "1", "0")
    assert suite.get("time") == "0.750"
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert cases["uplink.carIn"].get("classname") == "cpmi.platform.uplink"
    failure = cases["uplink.carIn"].find("failure")
    assert failure is not None
    assert failure.get("message") == 'answered 9010 字段无效: data.inTime <"yesterday"> | & more'
    assert failure.text is not None and failure.text.startswith("carIn is answered (B.6): ")
    skipped = cases["idle.read"].find("skipped")
    assert skipped is not None and skipped.get("message") == "not run: no --read-idle"
    assert cases["login.accepted"].findtext("system-out") == "token issued for park P001"


def test_markdown_is_a_table_with_the_summary() -> None:
    """Markdown: heading, preface, summary (FAILED if a row failed), a table row per check, pipes escaped."""
    text = markdown(report(), "Conformance of P001", ["- uplink: `http://gw`"])
    lines = text.splitlines()
    assert lines[:3] == ["# Conformance of P001", "", "- uplink: `http://gw`"]
    assert "**3 checks: 1 passed, 1 failed, 1 skipped** — FAILED" in lines
    assert "| PASS | `login.accepted` | B.4.1 | token issued for park P001 |" in lines
    assert (
        '| FAIL | `uplink.carIn` | B.6 | answered 9010 字段无效: data.inTime <"yesterday"> \\| & more |'
        in lines
    )
    assert sum(1 for line in lines if line.startswith("| ")) == 5  # header, rule, three rows
