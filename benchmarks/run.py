"""``make bench``: every benchmark, side by side with the peers, in one run.

Starts a real VictoriaMetrics (InfluxDB v2 write API) and the test suite's
HTTP sink on loopback, runs each benchmark in its own process (so that one's
threads and memory do not skew the next), prints one table and writes
``benchmarks/results/latest.json``. Absolute times on a shared 2-core host
are noisy: every verdict is a median and a ratio against a baseline measured
in the same run. See docs/benchmarks.md.

    python benchmarks/run.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import http_sink, victoria_metrics  # noqa: E402
from bench_load import round_ratio, rps_ceiling  # noqa: E402

RESULTS = HERE / "results" / "latest.json"

#: (section, what, value, compared with, ratio, target, verdict)
Row = tuple[str, str, str, str, str, str, str]


def _bench(script: str, *args: str, timeout: float = 600) -> str:
    """stdout of ``benchmarks/<script> args`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, str(HERE / script), *args],
        capture_output=True, text=True, timeout=timeout, cwd=HERE,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{script} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out.stdout


def _json(script: str, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(_bench(script, *args).strip().splitlines()[-1])
    return result


def _optional(script: str, *args: str) -> str | None:
    """Output of a benchmark written by others: None when it is absent; the
    error when it fails (one row says so; the rest of the table stands)."""
    if not (HERE / script).exists():
        return None
    try:
        return _bench(script, *args)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"FAILED: {str(exc).strip().splitlines()[-1][:120]}"


def _parsed(parse: Any, text: str | None, section: str, script: str) -> list[Row]:
    if text is not None and text.startswith("FAILED: "):
        return [(section, f"benchmarks/{script}", text, "", "", "", "n/a")]
    try:
        rows: list[Row] = parse(text)
    except RuntimeError as exc:
        return [(section, f"benchmarks/{script}", f"unreadable output: {exc}", "", "", "", "n/a")]
    return rows


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# -- each benchmark -> rows -----------------------------------------------------


def overhead_rows(result: dict[str, Any]) -> list[Row]:
    tc = result["test_client"]["variants"]
    prom = tc["prometheus"]["overhead_us"]
    ours = tc["flask_chest"]["overhead_us"]
    floor = tc["sdk_floor"]["overhead_us"]
    rows: list[Row] = [
        ("overhead (test client)", "undecorated route", f"{tc['plain']['request_us']:.0f} us/req",
         "", "", "", ""),
        ("", "prometheus-flask-exporter (defaults)", f"{prom:+.1f} us", "", "", "", ""),
        ("", "opentelemetry-instrumentation-flask", f"{tc['otel']['overhead_us']:+.1f} us",
         "", "", "", ""),
        ("", "SDK floor: 2 gauges, fresh UUID attrs", f"{floor:+.1f} us", "", "", "", ""),
        ("", "@flask_chest, 2 vars, 2 chests", f"{ours:+.1f} us", "prometheus",
         f"{ours / prom:.2f}", "<= 1.0", _verdict(ours <= prom)),
    ]  # fmt: skip
    for kind, label in (("flask_chest", "  CPU incl. export, writer per request"),
                        ("flask_chest_batched", "  CPU incl. export, writer batched")):
        cpu = tc[kind]["cpu_overhead_with_export_us"]
        rows.append(("", label, f"{cpu:+.0f} us", "prometheus", f"{cpu / prom:.1f}", "", "info"))
    if "wrk_missing" in result:
        rows.append(("gunicorn + wrk", "all variants", "not available", result["wrk_missing"],
                     "", "", "n/a"))  # fmt: skip
    if "wrk" in result:
        wrk = result["wrk"]["variants"]
        plain_rps = wrk["plain"]["rps"]
        prom_rps = wrk["prometheus"]["rps"]

        labels = {"plain": "undecorated route", "prometheus": "prometheus-flask-exporter",
                  "otel": "opentelemetry-instrumentation-flask", "sdk_floor": "SDK floor",
                  "flask_chest": "@flask_chest, 2 vars, 2 chests",
                  "flask_chest_batched": "  same, custom writer batched"}  # fmt: skip
        for kind, label in labels.items():
            run = wrk[kind]
            value = f"{run['rps']:.0f} req/s p50 {run['p50_ms']:.1f} p99 {run['p99_ms']:.1f} ms"
            section = "gunicorn + wrk" if kind == "plain" else ""
            if kind.startswith("flask_chest"):
                # Throughput, not added time: prometheus' cost here is within
                # wrk's run-to-run noise, and a difference of noises is no ratio.
                ratio = run["rps"] / prom_rps
                rows.append((section, label, value, "prometheus (req/s)",
                             f"{ratio:.2f}", ">= 1.0", _verdict(ratio >= 1.0)))  # fmt: skip
            elif kind == "plain":
                rows.append((section, label, value, "", "", "", ""))
            else:
                rows.append((section, label, value, "undecorated (req/s)",
                             f"{run['rps'] / plain_rps:.2f}", "", ""))  # fmt: skip
    return rows


def influx_rows(text: str | None) -> list[Row]:
    if text is None:
        return [("export: InfluxDB", "benchmarks/bench_influxdb.py", "not available",
                 "", "", "", "n/a")]  # fmt: skip
    rates = {
        match.group(1).strip(): float(match.group(2).replace(",", ""))
        for match in re.finditer(
            r"^((?:encode|end-to-end):.+?)\s+([\d,]+)\s+[\d.]+\s", text, re.M
        )
    }
    ours_enc = _pick(rates, "encode: flask_chest_otel")
    point = _pick(rates, "encode: influxdb_client.Point")
    e2e = _pick(rates, "end-to-end: exporter (")
    e2e_raw = _pick(rates, "end-to-end: exporter without gzip")
    plain_gzip = _pick(rates, "end-to-end: influxdb-client SYNCHRONOUS, lines ready, gzip")
    plain_raw = _pick(rates, "end-to-end: influxdb-client SYNCHRONOUS, lines ready, no gzip")
    with_point = _pick(rates, "end-to-end: influxdb-client SYNCHRONOUS, Point")
    plain = max(plain_gzip, plain_raw)
    # VictoriaMetrics' CPU and the writers' share the cores (bench_influxdb.py).
    ceiling = re.search(r"^ceiling of any writer .*?: ([\d.]+) =", text, re.M)
    return [
        ("export: InfluxDB", "line protocol encoding", f"{ours_enc:,.0f} points/s",
         "influxdb_client.Point", f"{ours_enc / point:.1f}", ">= 5",
         _verdict(ours_enc >= 5 * point)),
        ("", "  influxdb_client.Point", f"{point:,.0f} points/s", "", "", "", ""),
        ("", "end-to-end into VictoriaMetrics", f"{e2e:,.0f} points/s",
         "faster influxdb-client", f"{e2e / plain:.2f}", ">= 1.0", _verdict(e2e >= plain)),
        ("", "  influxdb-client SYNCHRONOUS, 5000/batch, gzip", f"{plain_gzip:,.0f} points/s",
         "", "", "", ""),
        ("", "  the same without gzip", f"{plain_raw:,.0f} points/s", "", "", "", ""),
        ("", "  like for like: both gzip", "", "client, lines ready",
         f"{e2e / plain_gzip:.2f}", "", ""),
        ("", "  like for like: neither gzip", f"{e2e_raw:,.0f} points/s", "client, lines ready",
         f"{e2e_raw / plain_raw:.2f}", "", ""),
        ("", "  against the client making lines with Point", f"{with_point:,.0f} points/s",
         "client, Point", f"{e2e / with_point:.2f}", "", ""),
    ] + ([("", "  ceiling of any writer that encodes (CPU model)", "", "client, lines ready",
           ceiling.group(1), "", "")] if ceiling else [])  # fmt: skip


def _pick(rates: dict[str, float], prefix: str) -> float:
    for label, rate in rates.items():
        if label.startswith(prefix):
            return rate
    raise RuntimeError(f"bench_influxdb.py printed no {prefix!r} row")


def http_writer_rows(text: str | None) -> list[Row]:
    if text is None:
        return [("export: HTTP writer", "benchmarks/bench_http_writer.py", "not available",
                 "", "", "", "n/a")]  # fmt: skip
    rows: list[Row] = []
    for match in re.finditer(
        r"^(per request.*?|batched.*?)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s*$",
        text, re.M,
    ):  # fmt: skip
        rows.append(("export: HTTP writer" if not rows else "", match.group(1).strip(),
                     f"{int(match.group(7)):,} payloads/s ({int(match.group(6)):,} POSTs/s)",
                     "", "", "", "info"))  # fmt: skip
    if not rows:
        raise RuntimeError("bench_http_writer.py printed no result row")
    return rows


def memory_rows(cases: dict[str, dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for backend, result in cases.items():
        checkpoints = result["checkpoints"]
        rss = " / ".join(f"{row['rss_mb']:.0f}" for row in checkpoints)
        counts = "/".join(_count(row["requests"]) for row in checkpoints)
        blocks = result["slope_blocks_per_request"]
        last = checkpoints[-1]
        # Flat: live Python memory blocks do not grow with requests over the
        # last two checkpoints (under 1 block per 100 requests); RSS is shown,
        # but glibc's arenas make it wobble. A down backend's buffer stays at
        # its bound.
        ok = blocks < 0.01
        note = f"{blocks:.4f} blocks/req, RSS {result['slope_bytes_per_request']:+.0f} B/req"
        if backend == "down":
            ok = ok and last["buffered"] <= result["max_buffer_items"]
            note += (f"; buffered {last['buffered']:,}, dropped {last['dropped_buffer_full']:,}"
                     f" + {last['dropped_collector_behind']:,} (collector behind)")  # fmt: skip
        else:
            ok = ok and last["dropped_buffer_full"] == 0
            note += f"; exported {last['exported']:,}"
        rows.append(("memory" if not rows else "", f"RSS MB after {counts} req, backend {backend}",
                     f"{result['start_rss_mb']:.0f} -> {rss}", note, "",
                     "blocks flat, buffer bound", _verdict(ok)))  # fmt: skip
    return rows


def _count(number: int) -> str:
    return f"{number // 1_000_000}M" if number >= 1_000_000 else f"{number // 1000}k"


def scaling_rows(result: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for axis, label in (("vars", "tracked vars"), ("chests", "chests")):
        series = result[axis]
        keys = list(series)
        ours = " / ".join(f"{series[k]['flask_chest']:.0f}" for k in keys)
        floor = " / ".join(f"{series[k]['sdk_floor']:.0f}" for k in keys)
        first, last = keys[0], keys[-1]
        our_growth = series[last]["flask_chest"] - series[first]["flask_chest"]
        floor_growth = series[last]["sdk_floor"] - series[first]["sdk_floor"]
        target, verdict = "", "info"
        if axis == "chests":
            target, verdict = "growth <= floor's", _verdict(our_growth <= floor_growth)
        rows.append(("scaling (in-context)" if not rows else "",
                     f"+us/req, {label} {'/'.join(keys)}", ours,
                     f"SDK floor: {floor}",
                     f"{our_growth:+.0f} vs {floor_growth:+.0f} us", target, verdict))  # fmt: skip
    return rows


# -- table ----------------------------------------------------------------------

HEADER: Row = ("section", "measurement", "value", "compared with", "ratio", "target", "verdict")


def record_path_rows(result: dict[str, Any]) -> list[Row]:
    """The request thread's own CPU per request, with and without a spool."""
    plain = result["sqlite"]["request_path_cpu_us_median"]
    spooled = result["sqlite_spooled"]["request_path_cpu_us_median"]
    return [
        ("request path (thread CPU)", "SQLite chest, 2 vars", f"{plain:.1f} us/req",
         "", "", "", ""),
        ("", "  same chest with spool_dir", f"{spooled:.1f} us/req", "without spool",
         f"{spooled / plain:.2f}", "<= 1.1", _verdict(spooled <= 1.1 * plain)),
    ]  # fmt: skip


#: The same load with each wrk connection waiting this long before each
#: request: about half the saturated rate, where latency is not queueing.
HALF_RATE_DELAY_MS = 2


def load_rows(
    results: dict[str, Any],
    section: str = "load: gunicorn -w 2 + wrk",
    targets: bool = True,
    backends: str = "VictoriaMetrics + HTTP sink, same 2 cores",
    saturated: bool = True,
) -> list[Row]:
    """gunicorn sync -w 2 + wrk: each variant against prometheus-flask-exporter,
    as the median of each round's ratio (targets of issue 15 for our modes, at
    saturation: req/s >= 0.9x, p99 <= 1.5x; below it, the same figures
    without targets)."""
    base = results["prometheus"]
    rows: list[Row] = []

    def spread(stat: dict[str, float], digits: int) -> str:
        return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"

    for name, result in results.items():
        ours = targets and name in (
            "sqlite", "batched", "per_request", "per_request_one_connection"
        )
        delivered = result.get("delivered")
        complete = delivered is None or all(
            count >= result["served"] for count in delivered.values()
        )
        for key, label, digits, target in (
            ("rps", "req/s", 0, 0.9),
            ("p99_ms", "p99 ms", 2, 1.5),
            ("cpu_us_per_request", "worker CPU us/request", 0, None),
        ):
            ratio = round_ratio(result, base, key)
            verdict = ""
            if ours and target is not None:
                met = ratio >= target if key == "rps" else ratio <= target
                verdict = _verdict(met and complete)
            rows.append((
                section, f"{name}: {label}", spread(result[key], digits),
                "prometheus-flask-exporter", f"{ratio:.2f}x",
                (f">= {target}x" if key == "rps" else f"<= {target}x") if ours and target else "",
                verdict,
            ))  # fmt: skip
        if delivered is not None:
            rows.append((
                section, f"{name}: backends' CPU us/request",
                spread(result["backend_cpu_us_per_request"], 0),
                backends, "", "", "info",
            ))  # fmt: skip
            if saturated:
                rows.append((
                    section, f"{name}: req/s ceiling, backends on these cores", "",
                    "prometheus, at its workers' CPU", f"{rps_ceiling(result, base):.2f}x", "",
                    "info",
                ))  # fmt: skip
            rows.append((
                section, f"{name}: delivered",
                ", ".join(f"{target} {count}" for target, count in delivered.items()),
                f"{result['served']} served", "", "all", _verdict(complete),
            ))  # fmt: skip
    return rows


def table(rows: list[Row]) -> str:
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER))]

    def line(row: Row) -> str:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(HEADER), rule, *(line(row) for row in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test)")
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    started = time.monotonic()
    results: dict[str, Any] = {}
    rows: list[Row] = []
    timings: dict[str, float] = {}

    def step(name: str) -> None:
        timings[name] = round(time.monotonic() - started - sum(timings.values()), 1)
        print(f"bench: {name} done ({timings[name]:.0f} s)", file=sys.stderr, flush=True)

    with victoria_metrics() as influx_url, http_sink() as sink_url:
        urls = ["--influx-url", influx_url]
        results["overhead"] = _json("bench_overhead.py", *urls, "--sink-url", sink_url, *quick)
        step("overhead")
        results["scaling"] = _json("bench_scaling.py", *urls, *quick)
        step("scaling")
        results["memory"] = {
            backend: _json("bench_memory.py", "--backend", backend, *urls, *quick)
            for backend in ("up", "down")
        }
        step("memory")
    influx_text = _optional("bench_influxdb.py")
    results["influxdb"] = influx_text
    step("influxdb")
    writer_text = _optional("bench_http_writer.py", "--requests", "500" if quick else "2000")
    results["http_writer"] = writer_text
    step("http_writer")
    results["load"] = _json("bench_load.py", "--json", *quick)
    step("load")
    results["load_half"] = _json(
        "bench_load.py", "--json", "--delay-ms", str(HALF_RATE_DELAY_MS),
        "--variants", "prometheus,sqlite,batched,per_request", *quick,
    )  # fmt: skip
    step("load below saturation")
    results["load_gthread"] = _json(
        "bench_load.py", "--json", "--worker-class", "gthread",
        "--variants", "prometheus,sqlite,batched,per_request", *quick,
    )  # fmt: skip
    step("load, gthread workers")
    results["load_lean_influx"] = _json(
        "bench_load.py", "--json", "--influx", "lean",
        "--variants", "prometheus,batched,per_request", *quick,
    )  # fmt: skip
    step("load, InfluxDB endpoint off the cores")
    results["record_path"] = _json("bench_record_path.py", *(["--rounds", "5"] if quick else []))
    step("record_path")

    rows += overhead_rows(results["overhead"])
    rows += record_path_rows(results["record_path"])
    rows += load_rows(results["load"])
    rows += load_rows(
        results["load_half"], f"load: wrk delay {HALF_RATE_DELAY_MS} ms (~half rate)",
        targets=False, saturated=False,
    )  # fmt: skip
    rows += load_rows(results["load_gthread"], "load: gthread -w 2 --threads 4 + wrk")
    rows += load_rows(
        results["load_lean_influx"], "load: -w 2, lean endpoint for InfluxDB", targets=False,
        backends="lean endpoints (InfluxDB lines, HTTP sink), same 2 cores",
    )  # fmt: skip
    rows += _parsed(influx_rows, influx_text, "export: InfluxDB", "bench_influxdb.py")
    rows += _parsed(http_writer_rows, writer_text, "export: HTTP writer", "bench_http_writer.py")
    rows += memory_rows(results["memory"])
    rows += scaling_rows(results["scaling"])

    info = machine()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = table(rows)
    print(f"\nflask_chest_otel benchmarks, {when}; {info['nproc']} CPUs ({info['cpu']}), "
          f"Python {info['python']}; {time.monotonic() - started:.0f} s\n")  # fmt: skip
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "date": when, "machine": info, "quick": args.quick, "seconds": timings,
        "table": [dict(zip(HEADER, row, strict=True)) for row in rows], "results": results,
    }, indent=2) + "\n")  # fmt: skip
    print(f"\nwritten: {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
