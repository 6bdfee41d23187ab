"""A minimal logger for the runtime's services (GS, shepherd).

The services start with every ``ember run``; the standard ``logging`` module
costs ~5 ms to import, so they use this instead: warnings and errors go to
stderr (which the launcher shares) as ``ember <who>: LEVEL: message``;
``EMBER_LOG=info`` adds the lifecycle (bring-up, teardown, process starts
and exits), ``EMBER_LOG=debug`` adds the details, ``EMBER_LOG=error`` hides
warnings.  ``ember run`` refuses any other value (:func:`level_from_env`)
before it starts anything, so the services never see a bad one.  The
interface is the subset of ``logging.Logger`` they use.
"""
import os
import sys

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
ENV = "EMBER_LOG"


def level_from_env():
    """The level ``EMBER_LOG`` names (warning if unset or empty); ValueError
    with the message ``ember run`` prints for anything else."""
    text = os.environ.get(ENV, "")
    if not text.strip():
        return _LEVELS["warning"]
    level = _LEVELS.get(text.strip().lower())
    if level is None:
        raise ValueError(f"{ENV}={text!r} is not a log level; use one of {', '.join(_LEVELS)}")
    return level


class Logger:
    def __init__(self, who):
        self.who = who
        try:
            self.level = level_from_env()
        except ValueError:
            self.level = _LEVELS["warning"]

    def _log(self, level, name, fmt, args):
        if level < self.level:
            return
        try:
            text = fmt % args if args else fmt
        except Exception:   # a bad format must never take a service down
            text = f"{fmt!r} % {args!r}"
        err = sys.stderr
        if err is not None:
            try:
                err.write(f"ember {self.who}: {name}: {text}\n")
                err.flush()
            except (OSError, ValueError):
                pass

    def debug(self, fmt, *args):
        self._log(10, "DEBUG", fmt, args)

    def info(self, fmt, *args):
        self._log(20, "INFO", fmt, args)

    def warning(self, fmt, *args):
        self._log(30, "WARNING", fmt, args)

    def enabled(self, level):
        """True if a message at ``level`` ("debug", "info", ...) is printed."""
        return _LEVELS[level] >= self.level

    def error(self, fmt, *args):
        self._log(40, "ERROR", fmt, args)


def get(who):
    return Logger(who)
