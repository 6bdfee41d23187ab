"""Benchmark results as JSON and as a PNG chart, for every benchmarks/bench_*.py.

A benchmark adds the two options to its parser and, once it has its
figures, hands them over as *measures*: one per question it answers, each
with ember's value beside the baselines it ran in the same run::

    import _report
    _report.add_args(ap)                       # --json PATH, --png PATH
    ...
    _report.write(args, "bench_queues", [
        _report.measure("Queue put+get, small objects", "objects/s",
                        {"ember": 1.2e6, "mp.Queue": 1.1e5}, better="higher", target=5.5e5),
    ])

``write`` does nothing unless ``--json`` or ``--png`` was given.  The JSON
holds the command line, the machine (cores, load average, kernel, Python)
and the measures; the PNG draws one panel of horizontal bars per measure,
ember's bars in colour, the baselines in grey, the target as a dashed line.
A benchmark made of parts adds ``--only`` with ``add_only(ap, PARTS)``.
The PNG needs matplotlib (``pip install -e '.[charts]'``); ``--png`` checks
for it when the arguments are parsed, before the benchmark runs.
"""
import datetime
import json
import math
import os
import platform
import shlex
import sys

__all__ = ["add_args", "add_only", "measure", "machine", "write", "plot"]

BETTER = ("higher", "lower")


def _png_path(path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        import argparse
        raise argparse.ArgumentTypeError(
            "writing a chart needs matplotlib: pip install -e '.[charts]'") from None
    return path


def add_args(ap):
    """Add ``--json PATH`` and ``--png PATH`` to an argparse parser."""
    ap.add_argument("--json", metavar="PATH", default=None,
                    help="also write the results as JSON to PATH")
    ap.add_argument("--png", metavar="PATH", default=None, type=_png_path,
                    help="also draw the results as a PNG chart at PATH (needs matplotlib)")
    return ap


def add_only(ap, parts, help="comma-separated parts to run (default: all)"):
    """Add ``--only PART,...`` to an argparse parser: ``args.only`` is the
    set of the parts named (all of ``parts`` by default); an unknown or
    empty list is a usage error."""
    parts = tuple(parts)

    def _only(text):
        got = {p.strip() for p in text.split(",") if p.strip()}
        if not got or not got <= set(parts):
            import argparse
            raise argparse.ArgumentTypeError(
                f"takes a comma-separated list of {', '.join(parts)}; got {text!r}")
        return got

    ap.add_argument("--only", default=",".join(parts), type=_only, metavar="PART,...",
                    help=f"{help}, of: {', '.join(parts)}")
    return ap


def _number(v, what):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {v!r}")
    return float(v)


def measure(title, unit, values, *, better="higher", target=None, note=None):
    """One measure: ``values`` maps a label ("ember", "mp.Queue", ...) to a
    number in ``unit``; labels whose value is None (a baseline that was not
    installed) are left out.  ``better``: "higher" or "lower".  ``target``:
    the issue's target in the same unit (drawn as a dashed line)."""
    if not isinstance(title, str) or not title:
        raise ValueError(f"a measure needs a non-empty title, got {title!r}")
    if not isinstance(unit, str) or not unit:
        raise ValueError(f"measure {title!r} needs a non-empty unit, got {unit!r}")
    if better not in BETTER:
        raise ValueError(f"measure {title!r}: better must be 'higher' or 'lower', got {better!r}")
    if not isinstance(values, dict):
        raise ValueError(f"measure {title!r}: values must be a dict of label -> number, "
                         f"got {type(values).__name__}")
    vals = {}
    for label, v in values.items():
        if not isinstance(label, str) or not label:
            raise ValueError(f"measure {title!r}: a label must be a non-empty str, got {label!r}")
        if v is not None:
            vals[label] = _number(v, f"measure {title!r}, value of {label!r}")
    if not vals:
        raise ValueError(f"measure {title!r} has no values")
    m = {"title": title, "unit": unit, "better": better, "values": vals}
    if target is not None:
        m["target"] = _number(target, f"measure {title!r}, target")
    if note:
        m["note"] = str(note)
    return m


def machine():
    """Where the figures were measured."""
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "load": [round(x, 2) for x in load],
            "kernel": platform.release(), "python": platform.python_version(),
            "machine": platform.machine()}


def _command(bench, argv):
    return " ".join(["python", f"benchmarks/{bench}.py", *map(shlex.quote, argv)])


def write(args, bench, measures, *, argv=None):
    """Write ``--json`` and/or ``--png`` (as ``args`` asks); returns the
    report (a dict), or None when neither was asked for."""
    json_path, png_path = getattr(args, "json", None), getattr(args, "png", None)
    if not json_path and not png_path:
        return None
    if not measures:
        raise ValueError(f"{bench}: no measures to write")
    for m in measures:
        if not isinstance(m, dict) or "values" not in m:
            raise ValueError(f"{bench}: measures must be made by _report.measure(), got {m!r}")
    report = {
        "bench": bench,
        "command": _command(bench, sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "measures": list(measures),
    }
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    if png_path:
        plot(report, png_path)
    return report


def _fmt(v):
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def plot(report, path):
    """Draw ``report`` (as :func:`write` makes it) to the PNG ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    measures = report["measures"]
    heights = [0.7 + 0.32 * len(m["values"]) for m in measures]
    fig, axes = plt.subplots(len(measures), 1, figsize=(8, 0.9 + sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, m in zip(axes[:, 0], measures):
        labels = list(m["values"])[::-1]
        vals = [m["values"][k] for k in labels]
        colors = ["#d95f02" if k.lower().startswith("ember") else "#9e9e9e" for k in labels]
        ax.barh(labels, vals, color=colors, height=0.6)
        positive = [v for v in vals if v > 0]
        if positive and max(positive) / min(positive) > 50 and len(positive) == len(vals):
            ax.set_xscale("log")
        for y, v in enumerate(vals):
            ax.text(v, y, " " + _fmt(v), va="center", fontsize=8)
        note = f"; target {m['note']}" if m.get("note") else ""
        if "target" in m:
            ax.axvline(m["target"], color="#1b9e77", linestyle="--", linewidth=1)
            note = f"; dashed: target {_fmt(m['target'])}"
        arrow = "higher is better" if m["better"] == "higher" else "lower is better"
        ax.set_title(f"{m['title']} ({m['unit']}, {arrow}{note})", fontsize=9, loc="left")
        if ax.get_xscale() == "linear":
            ax.set_xlim(0, max(vals + [m.get("target", 0)]) * 1.18 or 1)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt(v) if v else "0"))
        else:
            ax.margins(x=0.18)
        ax.tick_params(labelsize=8)
    mc = report["machine"]
    fig.suptitle(f"{report['bench']}: {mc['cpus']} cores, load {mc['load'][0]:.1f}, "
                 f"Linux {mc['kernel']}, Python {mc['python']}, {report['date']}",
                 fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    """``python benchmarks/_report.py OUTDIR [bench_x ...]``: run every
    benchmark (or those named), one after the other, each writing
    ``OUTDIR/<bench>.json`` and ``OUTDIR/<bench>.png``."""
    import argparse
    import glob
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    every = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(here, "bench_*.py")))
    ap = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0].replace("``", ""))
    ap.add_argument("outdir", type=_png_path)
    ap.add_argument("benches", nargs="*", metavar="bench", help=f"of {', '.join(every)}")
    a = ap.parse_args(argv)
    for b in a.benches:
        if b.removesuffix(".py") not in every:
            ap.error(f"no benchmark {b!r} (there are {', '.join(every)})")
    os.makedirs(a.outdir, exist_ok=True)
    failed = []
    for b in [b.removesuffix(".py") for b in a.benches] or every:
        out = os.path.join(a.outdir, b)
        print(f"== {b} (load {os.getloadavg()[0]:.1f})", flush=True)
        r = subprocess.run([sys.executable, os.path.join(here, b + ".py"),
                            "--json", out + ".json", "--png", out + ".png"])
        if r.returncode:
            failed.append(b)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
