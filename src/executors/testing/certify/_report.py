"""Scorecards as text: the terminal summary, the Markdown page, the peers page."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

from . import _suite
from ._card import Scorecard, TestResult, topic_line

__all__ = ["anchor", "comparison", "markdown", "summary"]

_OUTCOME_WORD = {
    "passed": "pass",
    "failed": "FAIL",
    "hung": "HUNG",
    "n/a": "n/a",
    "not run": "not run",
}


def _topics(cards: Iterable[Scorecard]) -> list[str]:
    seen = {t.topic for card in cards for t in card.tests}
    ordered = [t for t in _suite.TOPICS if t in seen]
    return ordered + sorted(seen - set(ordered))


def anchor(topic: str, test_name: str) -> str:
    """The id of a test's row on a page: ``crashes-task-kills-its-worker-os-exit``."""
    name = test_name.removeprefix("test_")
    return re.sub(r"[^a-z0-9]+", "-", f"{topic} {name}".lower()).strip("-")


def _totals(card: Scorecard) -> str:
    counts = card.counts()
    parts = [f"{n} {k}" for k, n in counts.items() if n]
    return ", ".join(parts) or "no tests"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def summary(card: Scorecard) -> str:
    """The terminal summary: one line per topic, then what failed and why."""
    lines = [f"scorecard of {card.label}:"]
    for topic in _topics([card]):
        tests = [t for t in card.tests if t.topic == topic]
        lines.append("  " + topic_line(topic, tests))
    bad = [t for t in card.tests if t.outcome in ("failed", "hung")]
    if bad:
        lines.append("failed or hung:")
        lines += [f"  {t.topic}: {t.name}: {t.outcome}: {t.reason}" for t in bad]
    if card.error:
        lines.append(f"error: {card.error}")
    verdict = "PASSED" if card.ok else "FAILED"
    lines.append(f"{verdict}: {_totals(card)}, in {_duration(card.seconds)}")
    return "\n".join(lines)


def _versions(card: Scorecard) -> str:
    return ", ".join(f"{k} {v}" for k, v in card.versions.items())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """``text`` as inline code in a table cell: no Markdown inside a reason."""
    if not text:
        return ""
    return "`" + _cell(text).replace("`", "'") + "`"


def _command(card: Scorecard) -> str:
    import json

    parts = ["python -m executors.testing certify", card.target]
    if card.kwargs:
        parts.append(f"--kwargs '{json.dumps(card.kwargs)}'")
    given = [
        f"--{'' if value else 'no-'}{name.replace('_', '-')}"
        for name, (value, how) in card.capabilities.items()
        if how.startswith("given")
    ]
    return " ".join(parts + given)


def markdown(card: Scorecard) -> str:
    """One target's scorecard as a Markdown page (``--report``)."""
    out = [
        f"# Scorecard: `{card.label}`",
        "",
        f"`{_command(card)}`, {card.date}, in {_duration(card.seconds)}; "
        f"{card.executor_type}; {_versions(card)}.",
        "",
        f"**{'Passed' if card.ok else 'Failed'}: {_totals(card)}.**",
        "",
    ]
    if card.error:
        out += [f"Error: {card.error}", ""]
    out += [f"Note: {note}." for note in card.notes]
    out += ["", "## Capabilities", "", "| capability | value | how it was known |"]
    out += ["|---|---|---|"]
    for name, (value, how) in card.capabilities.items():
        out.append(f"| `{name}` | {'yes' if value else 'no'} | {_cell(how)} |")
    out += ["", "## Summary", "", "| topic | passed | failed | hung | n/a | not run |"]
    out += ["|---|---|---|---|---|---|"]
    for topic in _topics([card]):
        c = card.counts(topic)
        out.append(
            f"| {topic} | {c['passed']} | {c['failed']} | {c['hung']} "
            f"| {c['n/a']} | {c['not run']} |"
        )
    for topic in _topics([card]):
        out += ["", f"## {topic}", "", "| test | outcome | detail |", "|---|---|---|"]
        for test in card.tests:
            if test.topic != topic:
                continue
            detail = test.reason or test.observed
            out.append(
                f"| `{_cell(test.name)}` | {_OUTCOME_WORD[test.outcome]} "
                f"| {_code(detail)} |"
            )
    return "\n".join(out) + "\n"


def _compare_cell(test: TestResult | None) -> str:
    if test is None:
        return "—"
    word = _OUTCOME_WORD[test.outcome]
    if test.outcome in ("failed", "hung"):
        return f"**{word}**"
    if test.outcome == "n/a" and test.reason:
        title = html.escape(test.reason.replace("|", "/"), quote=True)
        return f'<span title="{title}">{word}</span>'
    return word


def comparison(cards: list[Scorecard], intro: str = "", outro: str = "") -> str:
    """Scorecards side by side: one table per topic, one column per target.

    Each row has an anchor (:func:`anchor`) that other pages link to; each
    table is followed by the reason of every failure in it.
    """
    out = [intro.rstrip(), ""] if intro else []
    shared = {
        key: value
        for key, value in (cards[0].versions.items() if cards else ())
        if all(card.versions.get(key) == value for card in cards)
    }
    out += ["## The runs", ""]
    if shared:
        listed = ", ".join(f"{k} {v}" for k, v in shared.items())
        out += [f"Every run: {listed}.", ""]
    others = [
        ", ".join(f"{k} {v}" for k, v in card.versions.items() if shared.get(k) != v)
        for card in cards
    ]
    extra = any(others)
    out += [
        "| column | command | result | when, how long |"
        + (" other versions |" if extra else ""),
        "|---|---|---|---|" + ("---|" if extra else ""),
    ]
    notes: list[str] = []
    for card, other in zip(cards, others, strict=True):
        result = _totals(card) + (f"; error: {card.error}" if card.error else "")
        notes += [f"* {card.label}: {note}." for note in card.notes]
        out.append(
            f"| {card.label} | `{_cell(_command(card))}` | {_cell(result)} "
            f"| {card.date}, {_duration(card.seconds)} |"
            + (f" {_cell(other)} |" if extra else "")
        )
    if notes:
        out += ["", *notes]
    out += ["", "## Capabilities", ""]
    out += [
        "What each run assumed: *d* declared by the executor, *p* probed "
        "by running tasks, *g* given as a flag, *a* assumed; point at a "
        "cell for the evidence.",
        "",
    ]
    out += ["| capability | " + " | ".join(c.label for c in cards) + " |"]
    out += ["|---|" + "---|" * len(cards)]
    names = list(cards[0].capabilities) if cards else []
    for name in names:
        cells = []
        for card in cards:
            value, how = card.capabilities.get(name, [None, "?"])
            if value is None:
                cells.append("—")
                continue
            title = html.escape(how.replace("|", "/"), quote=True)
            word = f"{'yes' if value else 'no'} ({how[0]})"
            cells.append(f'<span title="{title}">{word}</span>')
        out.append(f"| `{name}` | " + " | ".join(cells) + " |")
    for topic in _topics(cards):
        out += ["", f"## {topic}", ""]
        out += ["| test | " + " | ".join(c.label for c in cards) + " |"]
        out += ["|---|" + "---|" * len(cards)]
        names = []
        for card in cards:
            for test in card.tests:
                if test.topic == topic and test.name not in names:
                    names.append(test.name)
        by_card = [
            {t.name: t for t in card.tests if t.topic == topic} for card in cards
        ]
        failures: list[str] = []
        for name in names:
            row_id = anchor(topic, name)
            cells = [_compare_cell(tests.get(name)) for tests in by_card]
            out.append(
                f'| <span id="{row_id}"></span>`{_cell(name)}` | '
                + " | ".join(cells)
                + " |"
            )
            for card, tests in zip(cards, by_card, strict=True):
                bad = tests.get(name)
                if bad is not None and bad.outcome in ("failed", "hung"):
                    failures.append(
                        f"* [`{name}`](#{row_id}), {card.label}: {_code(bad.reason)}"
                    )
        if failures:
            out += ["", "Why they failed:", "", *failures]
    if outro:
        out += ["", outro.strip()]
    return "\n".join(out) + "\n"
