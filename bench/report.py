"""Output of the benchmarks: their tables, their progress lines, the daemon-log findings, and the
work directory's fate."""

from __future__ import annotations

import re
import shutil
from typing import Any, Iterable, Sequence


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join([line, sep, *body])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _numeric(v: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+[a-z%x]*", v))


def say(*args: Any) -> None:
    print(*args, flush=True)



def report_log_problems(r: dict[str, Any]) -> None:
    """The daemon-log findings every benchmark prints after its table."""
    if r["tick_skips"]:
        say(f"    'timeout tick still running; skipping one' logged {r['tick_skips']} times")
    if r["problems"]:
        say("    log problems:")
        for line in r["problems"]:
            say("      " + line)


def finish(workdir: str, keep: bool) -> None:
    if keep:
        say(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
