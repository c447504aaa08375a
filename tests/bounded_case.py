"""What one input costs to read: run it in a fresh interpreter, measure, compare.

A hostile input is refused well only if the refusal is cheap: the acceptance for
untrusted input is "a project exception, at most twice the peak memory of an honest
read of the same kind, under 5 s". Measured in the same process, a test would see the
memory of everything imported and read before it; so :func:`measure` runs the case in
a new ``python`` (importing this checkout's ``imambig``), takes the peak resident set
(``ru_maxrss``, and the resident set sampled from the parent while the case runs)
after the imports and again after the case, and reports the growth, the wall time and
what was raised. An address-space limit above the start-up footprint turns
a runaway allocation into a ``MemoryError`` in the child instead of a swapping machine.

Use::

    honest = measure("load(path)", imports="from x import load", values={"path": ok})
    hostile = measure("load(path)", imports="from x import load", values={"path": bad})
    assert_refused_cheaply(hostile, honest, "FormatError")

``imports`` run before the first measurement (their cost is not counted), ``case`` after
it; ``values`` become variables of the case (strings, numbers, lists: JSON). A case may
set ``result`` for the parent to check (its ``repr``, cut to 300 characters).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FLOOR = 16 << 20  # growth tolerated whatever the honest read costs (allocator noise)
SECONDS = 5.0

_CHILD = '''
import json, resource, sys, time
values = json.loads(sys.stdin.read())
globals().update(values)
{imports}
def _peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def _vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0
_soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
if {address_space}:  # the soft limit only: it is put back before reporting
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + {address_space}, _hard))
def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
result = None
raised, message, project = "", "", False
print("@@start", _rss(), flush=True)
before, t0 = _peak(), time.perf_counter()
try:
{case}
except BaseException as exc:
    from imambig.errors import ImambigError
    raised, message = type(exc).__name__, str(exc)[:500]
    project = isinstance(exc, ImambigError)
seconds, after = time.perf_counter() - t0, _peak()
resource.setrlimit(resource.RLIMIT_AS, (_soft, _hard))
print("\\n@@cost " + json.dumps({{"raised": raised, "message": message, "project": project,
    "growth": after - before, "seconds": seconds, "result": repr(result)[:300]}}), flush=True)
'''


@dataclass(frozen=True)
class Cost:
    """What running a case cost and how it ended."""

    raised: str  # the exception's class name; "" when the case returned
    message: str
    project: bool  # the exception is one of imambig.errors
    growth: int  # peak resident set growth, bytes
    seconds: float
    result: str  # repr of the case's ``result`` variable

    def __str__(self) -> str:
        ended = f"{self.raised}: {self.message[:200]}" if self.raised else f"-> {self.result}"
        return f"{ended} (+{self.growth / 2**20:.1f} MiB, {self.seconds:.2f} s)"


def measure(case: str, *, imports: str = "", values: dict[str, Any] | None = None,
            address_space: int = 3 << 30, timeout: float = 120.0) -> Cost:
    """Run ``case`` (statements) in a fresh interpreter after ``imports``; see the module
    docstring. ``address_space``: bytes the child may map beyond its size after the
    imports (0: no limit). A child that does not finish in ``timeout`` seconds is a hang
    (``AssertionError``)."""
    script = _CHILD.format(imports=textwrap.dedent(imports),
                           case=textwrap.indent(textwrap.dedent(case).strip() or "pass",
                                                "    "),
                           address_space=int(address_space))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    assert proc.stdin and proc.stdout and proc.stderr
    lines: list[str] = []
    errors: list[str] = []
    stderr = proc.stderr
    for reader in (threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True),
                   threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)):
        reader.start()
    proc.stdin.write(json.dumps(values or {}))
    proc.stdin.close()
    start_rss, sampled = _sample(proc, lines, timeout, case)
    proc.wait()
    text = "".join(lines)
    marker = text.rfind("@@cost ")
    if marker < 0:
        time.sleep(0.1)  # let stderr arrive
        raise AssertionError(f"case died (exit {proc.returncode}): {''.join(errors)[-2000:]}")
    cost = json.loads(text[marker + len("@@cost ") :])
    if start_rss is not None:
        cost["growth"] = max(cost["growth"], sampled - start_rss)
    return Cost(**cost)


def _sample(proc: subprocess.Popen, lines: list[str], timeout: float, case: str
            ) -> tuple[int | None, int]:
    """The child's resident set when its case starts (as it reports it) and the largest
    one seen until the case ends, polled every half millisecond: ``ru_maxrss`` alone
    misses memory that was freed again (the kernel updates its high-water mark lazily)."""
    deadline, page = time.monotonic() + timeout, os.sysconf("SC_PAGE_SIZE")
    start_rss, sampled = None, 0
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"case did not finish in {timeout} s (a hang): {case}")
        seen = list(lines)
        if any(line.startswith("@@cost") for line in seen):
            break
        if start_rss is None:
            start_rss = next((int(line.split()[1]) for line in seen
                              if line.startswith("@@start")), None)
        else:
            try:
                with open(f"/proc/{proc.pid}/statm") as f:
                    sampled = max(sampled, int(f.read().split()[1]) * page)
            except (OSError, IndexError, ValueError):  # the child just ended
                pass
        time.sleep(0.0005)
    return start_rss, sampled


def assert_refused_cheaply(hostile: Cost, honest: Cost, error: str | None,
                           floor: int = FLOOR, seconds: float = SECONDS) -> None:
    """``hostile`` raised the project exception ``error`` (a class name; None: it must
    return, e.g. a listing that skips what it cannot read), its peak memory grew at most
    twice as much as ``honest``'s (or ``floor``), and it took under ``seconds``."""
    assert honest.raised == "", f"the honest read failed: {honest}"
    if error is None:
        assert hostile.raised == "", f"expected no exception, got {hostile}"
    else:
        assert hostile.project and hostile.raised == error, f"expected {error}, got {hostile}"
    assert hostile.growth <= max(2 * honest.growth, floor), \
        f"peak memory: {hostile} against an honest read's {honest}"
    assert hostile.seconds < seconds, f"too slow: {hostile}"
