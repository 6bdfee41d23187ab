"""A minimal logger for the runtime's services (GS, shepherd).

The services start with every ``ember run``; the standard ``logging`` module
costs ~5 ms to import, so they use this instead: warnings and errors go to
stderr (which the launcher shares) as ``ember <who>: LEVEL: message``;
``EMBER_LOG=debug`` also prints debug lines, ``EMBER_LOG=error`` hides
warnings.  The interface is the subset of ``logging.Logger`` they use.
"""
import os
import sys

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Logger:
    def __init__(self, who):
        self.who = who
        self.level = _LEVELS.get(os.environ.get("EMBER_LOG", "warning").lower(), 30)

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

    def error(self, fmt, *args):
        self._log(40, "ERROR", fmt, args)


def get(who):
    return Logger(who)
