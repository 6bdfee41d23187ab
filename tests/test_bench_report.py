"""benchmarks/_report.py: --json and --png of the benchmarks, on tiny real
runs (no timing is asserted: only that the files hold what was measured)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
import _report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench(name, *args, timeout=240):
    r = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"{name} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def _check_files(tmp_path, bench, titles):
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bench"] == bench
    assert report["command"].startswith(f"python benchmarks/{bench}.py ")
    assert "--json" in report["command"]
    mc = report["machine"]
    assert mc["cpus"] == os.cpu_count() and mc["kernel"] == os.uname().release
    assert len(mc["load"]) == 3 and mc["python"] == ".".join(map(str, sys.version_info[:3]))
    got = [m["title"] for m in report["measures"]]
    it = iter(got)                      # these, in this order (a bench may add more)
    assert all(t in it for t in titles), (titles, got)
    for m in report["measures"]:
        assert m["better"] in ("higher", "lower") and m["unit"]
        assert any(k.startswith("ember") for k in m["values"]), m
        assert len(m["values"]) >= 2, m               # ember beside a same-run baseline
        assert all(v >= 0 for v in m["values"].values()), m
    png = (tmp_path / "r.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    import matplotlib.image
    h, w = matplotlib.image.imread(str(tmp_path / "r.png")).shape[:2]
    assert w > 300 and h > 100 * len(got)             # a panel per measure
    return report


@pytest.mark.timeout(300)
def test_bench_objects_writes_json_and_png(tmp_path):
    r = _bench("bench_objects.py", "--quick", "--json", str(tmp_path / "r.json"),
               "--png", str(tmp_path / "r.png"))
    report = _check_files(tmp_path, "bench_objects",
                          ["proxy call round trip, small args, median",
                           "shared dict get+set, 2 processes"])
    # the JSON holds the figures the bench printed
    rtt = report["measures"][0]["values"]
    assert f"ember {rtt['ember.serve proxy']:.1f} /" in r.stdout
    dict_rates = report["measures"][1]["values"]
    assert f"Manager().dict() {dict_rates['Manager().dict()']:,.0f} ops/s" in r.stdout


@pytest.mark.timeout(300)
def test_bench_sync_writes_json_and_png(tmp_path):
    _bench("bench_sync.py", "--seconds", "0.02", "--rounds", "200",
           "--json", str(tmp_path / "r.json"), "--png", str(tmp_path / "r.png"))
    report = _check_files(tmp_path, "bench_sync", [
        "Lock acquire+release, uncontended", "Semaphore acquire+release, uncontended",
        "Lock, 2 processes contending (sum)", "Event ping-pong round trip, median"])
    assert report["measures"][-1]["target"] == 200


def test_no_files_without_the_options(tmp_path):
    import argparse
    ap = _report.add_args(argparse.ArgumentParser())
    args = ap.parse_args([])
    assert _report.write(args, "bench_x", [_report.measure("m", "s", {"ember": 1})]) is None
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(120)
def test_png_without_matplotlib_fails_before_the_run(tmp_path):
    code = ("import sys, runpy; sys.modules['matplotlib'] = None; "
            f"sys.path.insert(0, {str(BENCH)!r}); "
            f"sys.argv = ['bench_sync.py', '--png', {str(tmp_path / 'r.png')!r}]; "
            f"runpy.run_path({str(BENCH / 'bench_sync.py')!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "writing a chart needs matplotlib: pip install -e '.[charts]'" in r.stderr
    assert "ember sync benchmark" not in r.stdout             # nothing was run
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("args, kwargs, message", [
    (("", "s", {"ember": 1}), {}, "a measure needs a non-empty title, got ''"),
    (("t", "", {"ember": 1}), {}, "measure 't' needs a non-empty unit, got ''"),
    (("t", "s", {"ember": 1}), {"better": "faster"},
     "measure 't': better must be 'higher' or 'lower', got 'faster'"),
    (("t", "s", [1, 2]), {}, "measure 't': values must be a dict of label -> number, got list"),
    (("t", "s", {"ember": None}), {}, "measure 't' has no values"),
    (("t", "s", {"ember": float("nan")}), {},
     "measure 't', value of 'ember' must be a finite number, got nan"),
    (("t", "s", {"ember": True}), {}, "measure 't', value of 'ember' must be a finite number"),
    (("t", "s", {"": 1}), {}, "measure 't': a label must be a non-empty str, got ''"),
    (("t", "s", {"ember": 1}), {"target": "fast"},
     "measure 't', target must be a finite number, got 'fast'"),
])
def test_bad_measures_raise(args, kwargs, message):
    with pytest.raises(ValueError) as e:
        _report.measure(*args, **kwargs)
    assert str(e.value).startswith(message)


def test_write_refuses_bad_measure_lists(tmp_path):
    import argparse
    args = argparse.Namespace(json=str(tmp_path / "r.json"), png=None)
    with pytest.raises(ValueError, match="bench_x: no measures to write"):
        _report.write(args, "bench_x", [])
    with pytest.raises(ValueError, match=r"bench_x: measures must be made by _report.measure\(\)"):
        _report.write(args, "bench_x", [{"title": "t"}])
    assert not (tmp_path / "r.json").exists()
    # a baseline that was not installed (None) is left out, not drawn as 0
    rep = _report.write(args, "bench_x", [_report.measure("t", "s", {"ember": 2, "zmq": None})],
                        argv=["--quick"])
    assert rep["measures"][0]["values"] == {"ember": 2.0}
    assert rep["command"] == "python benchmarks/bench_x.py --quick"
    assert json.loads((tmp_path / "r.json").read_text()) == rep


def test_only_parses_the_parts_and_refuses_others(capsys):
    import argparse
    ap = _report.add_only(argparse.ArgumentParser(prog="bench_x"), ("map", "start", "queue"))
    assert ap.parse_args([]).only == {"map", "start", "queue"}
    assert ap.parse_args(["--only", " start, map,"]).only == {"map", "start"}
    for bad in ("map,nope", "", ","):
        with pytest.raises(SystemExit) as e:
            ap.parse_args(["--only", bad])
        assert e.value.code == 2
        assert (f"bench_x: error: argument --only: takes a comma-separated list of "
                f"map, start, queue; got {bad!r}") in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_run_all_refuses_an_unknown_bench(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH / "_report.py"), str(tmp_path / "out"),
                        "bench_sync", "bench_nope"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "error: no benchmark 'bench_nope' (there are bench_channels, " in r.stderr
    assert not (tmp_path / "out").exists()                  # nothing was run


def test_committed_charts_are_whole():
    # README shows one chart; docs/performance.md shows them all (its images
    # are checked by the docs build); each chart's JSON names its command.
    readme = (ROOT / "README.md").read_text()
    import re
    shown = re.findall(r"!\[[^]]*\]\((docs/_static/bench/[\w.]+\.png)\)", readme)
    assert shown, "README shows no chart"
    for png in shown:
        assert (ROOT / png).read_bytes().startswith(PNG_MAGIC), png
    for js in (ROOT / "docs" / "_static" / "bench").glob("*.json"):
        report = json.loads(js.read_text())
        assert report["bench"] == js.stem
        cmd = report["command"]          # (the benchmark's own options may come first)
        assert cmd.startswith(f"python benchmarks/{js.stem}.py ") and " --json " in cmd, cmd
        assert (js.with_suffix(".png")).read_bytes().startswith(PNG_MAGIC)
