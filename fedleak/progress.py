"""Progress displays for long loops (attacks, enhancer training, attack pairs), one helper for all of them.

Where the output goes decides how it looks:

* a terminal (``stderr.isatty()``): a tqdm bar, redrawn in place;
* a Jupyter notebook (an IPython kernel): tqdm's notebook widget, or tqdm's text bar when ipywidgets is not
  installed (the notebook renders its carriage returns as one updating line);
* anything else (a log file, a pipe, CI): **one plain line every N seconds**, and one at the end, instead of
  tqdm's carriage-return updates that pile up into one enormous line. ``N`` is the environment variable
  ``FEDLEAK_PROGRESS_EVERY`` (seconds, default :data:`DEFAULT_EVERY`), or ``every=`` where a display is made.

>>> bar = Bar(total=100, desc="rog")
>>> bar.update(10, postfix={"loss": "0.12"})
>>> bar.close()
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Optional, TextIO

from fedleak.errors import ConfigError

#: environment variable: seconds between two plain progress lines when the output is not a terminal
EVERY_ENV = "FEDLEAK_PROGRESS_EVERY"
#: default seconds between two plain progress lines
DEFAULT_EVERY = 10.0


def every_seconds(every: Optional[float] = None) -> float:
    """``every`` when given, else ``$FEDLEAK_PROGRESS_EVERY``, else :data:`DEFAULT_EVERY` (seconds, >= 0)."""
    if every is None:
        raw = os.environ.get(EVERY_ENV, "").strip()
        if not raw:
            return DEFAULT_EVERY
        try:
            every = float(raw)
        except ValueError:
            raise ConfigError(f"{EVERY_ENV}={raw!r} is not a number of seconds") from None
    if not math.isfinite(every) or every < 0:
        raise ConfigError(f"progress interval must be a non-negative number of seconds, got {every!r}")
    return float(every)


def in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) session, where a widget or text bar is shown."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def display_mode(file: Optional[TextIO] = None) -> str:
    """``"notebook"``, ``"bar"`` (a terminal) or ``"lines"`` (anything else) for output to ``file``
    (default: ``sys.stderr``)."""
    if file is None and in_notebook():
        return "notebook"
    f = sys.stderr if file is None else file
    return "bar" if f.isatty() else "lines"


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h01m``: a short wall-clock duration."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def eta_seconds(done: float, total: Optional[float], elapsed: float) -> Optional[float]:
    """Remaining time at the rate so far (``elapsed / done`` per unit), or None when it cannot be told."""
    if not total or done <= 0 or elapsed <= 0:
        return None
    return max(0.0, elapsed / done * (total - done))


def _tqdm_class(mode: str):
    if mode == "notebook":
        from tqdm.notebook import IProgress

        if IProgress is not None:  # ipywidgets is installed: the widget bar
            from tqdm.notebook import tqdm as notebook_tqdm

            return notebook_tqdm
    from tqdm.std import tqdm

    return tqdm


class Bar:
    """One progress display: tqdm where output is a terminal or a notebook, plain lines elsewhere.

    ``total``: units of work (None: unknown); ``desc``: what is running; ``unit``: the unit's name;
    ``file``: where lines go (default ``sys.stderr``; a file that is not a terminal gets plain lines);
    ``every``: seconds between plain lines (see :func:`every_seconds`); ``start``: ``time.time()`` of the
    start of the work, when it began before the display was made; ``mode``: force ``bar``, ``lines`` or
    ``notebook`` (default: :func:`display_mode`).
    """

    def __init__(self, total: Optional[int], desc: str, unit: str = "it", file: Optional[TextIO] = None,
                 every: Optional[float] = None, start: Optional[float] = None, mode: Optional[str] = None):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.every = every_seconds(every)
        self.mode = mode or display_mode(file)
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.t0 = time.time() if start is None else start
        self.last_line = self.t0
        self.printed_n: Optional[int] = None  # position of the last plain line
        self.lines = 0  # plain lines written
        self.bar = None
        if self.mode in ("bar", "notebook"):
            self.bar = _tqdm_class(self.mode)(total=total or None, desc=desc, unit=unit, dynamic_ncols=True,
                                              leave=True, file=sys.stderr if file is None else file)
            self.bar.start_t = self.bar.last_print_t = self.t0  # elapsed and rate from the start of the work

    # -- updates
    def set(self, n: int, desc: Optional[str] = None, postfix: Optional[dict] = None) -> None:
        """Move to position ``n`` (optionally a new description and postfix values such as the loss)."""
        self.n = int(n)
        if desc is not None:
            self.desc = desc
        if postfix:
            self.postfix.update(postfix)
        if self.bar is not None:
            if desc is not None:
                self.bar.set_description(desc, refresh=False)
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(self.n - self.bar.n)  # redraws at most every tqdm.mininterval
        elif time.time() - self.last_line >= self.every:
            self._line()

    def update(self, k: int = 1, postfix: Optional[dict] = None) -> None:
        """Advance by ``k`` units."""
        self.set(self.n + k, postfix=postfix)

    def reset(self, total: Optional[int]) -> None:
        """Start counting again from zero with a new total (a new stage or restart)."""
        self.total, self.n = total, 0
        if self.bar is not None:
            self.bar.reset(total=total or None)

    def close(self) -> None:
        """Finish the display: close the bar, or write the last plain line (when the position moved since)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and self.printed_n != self.n:
            self._line()
        self.mode = "closed"

    # -- plain lines
    def text(self) -> str:
        """The plain progress line: ``desc: n/total unit (pct%), elapsed 5s, ETA 1m35s, loss=0.01``."""
        elapsed = time.time() - self.t0
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
                 + (f" ({100.0 * self.n / self.total:.0f}%)" if self.total else "")]
        parts.append(f"elapsed {duration(elapsed)}")
        eta = eta_seconds(self.n, self.total, elapsed)
        if eta is not None and self.n < (self.total or 0):
            parts.append(f"ETA {duration(eta)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]  # tqdm's postfix style
        return ", ".join(parts)

    def _line(self) -> None:
        f = sys.stderr if self.file is None else self.file
        print(self.text(), file=f, flush=True)
        self.last_line, self.printed_n = time.time(), self.n
        self.lines += 1


class AttackProgress:
    """An attack ``callback``: shows progress (:class:`Bar`, when ``enabled``) and writes about ten lines
    per stage to ``log`` (any ``str -> None``; ``flush`` is called after each, e.g. to rewrite run.log).

    The attack calls it with its state: ``iteration``, ``iterations``, ``loss`` and, where they apply,
    ``restart``/``restarts``, ``stage``/``stages``, ``elapsed``; :attr:`last` keeps the latest state.
    """

    def __init__(self, log: Optional[Callable[[str], None]] = None, enabled: bool = True, desc: str = "attack",
                 flush: Optional[Callable[[], None]] = None, file: Optional[TextIO] = None,
                 every: Optional[float] = None):
        self.log, self.enabled, self.desc, self.flush = log, enabled, desc, flush
        self.file, self.every = file, every
        self.bar: Optional[Bar] = None
        self.last: dict[str, Any] = {}
        self.next_log = 0
        self.where = (0, 0)  # (stage, restart) of the last callback
        self.t_start = time.time()

    def __call__(self, state: dict) -> None:
        self.last = dict(state)
        it, total = int(state.get("iteration", 0)), int(state.get("iterations", 0) or 0)
        restarts = int(state.get("restarts", 1) or 1)
        r = int(state.get("restart", 0) or 0)
        stage, stages = int(state.get("stage", 0) or 0), int(state.get("stages", 1) or 1)
        pos, grand = r * total + it, total * restarts
        if (stage, r) != self.where:  # a new stage (or restart) counts from zero with its own total
            self.where, self.next_log = (stage, r), 0
            if self.bar is not None:
                self.bar.reset(grand or None)
        loss = state.get("loss")
        where = (f" (stage {stage + 1}/{stages})" if stages > 1 else "") + \
                (f" (restart {r + 1}/{restarts})" if restarts > 1 else "")
        if self.enabled:
            if self.bar is None:
                self.bar = Bar(grand or None, self.desc, unit="it", file=self.file, every=self.every,
                               start=self.t_start)
            self.bar.set(pos, desc=self.desc + where,
                         postfix={"loss": f"{float(loss):.4g}"} if loss is not None else None)
        if self.log is not None and pos >= self.next_log:
            el = state.get("elapsed")
            self.log(f"iteration {it}/{total}{where}" + (f" loss {float(loss):.6g}" if loss is not None else "")
                     + (f" elapsed {float(el):.1f}s" if el is not None else ""))
            self.next_log = pos + max(1, grand // 10)
            if self.flush is not None:
                self.flush()  # a killed run keeps its progress lines (about ten small rewrites per run)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def wants_progress(progress: Optional[bool]) -> bool:
    """The Python API's ``progress`` argument: True / False, or None for "only in a notebook" (a library
    call in a script stays silent; in Jupyter the user sees the attack move)."""
    return in_notebook() if progress is None else bool(progress)
