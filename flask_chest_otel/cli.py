"""The flask-chest-otel command. Its demo runs flask-chest's sample app
in-process, sends it requests, prints the SLIs read back from the embedded
SQLite chest, reports what reached every other target it was given, and ends
with the report of its run. ``report`` prints the SLIs of any SQLite chest's
file (``flask_chest_otel.report``)."""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from flask import Flask, g, request

from ._chest import Chest
from ._http import safe_url
from .decorator import flask_chest
from .report import format_table, parse_duration, slis
from .sqlite import FlaskChestSQLite

ROUTES = ("/", "/api-endpoint")
TRACKED_VARS = {"GET": ["transaction"], "POST": ["transaction", "response_time"]}


def custom_request_id_generator() -> str:
    """The sample usage's generator: the current date and time."""
    return datetime.now().strftime("%Y%m%d%H%M%S%f")


def build_sample_app(chests: Sequence[Any], work_seconds: float = 0.002) -> Flask:
    """The sample usage's app: two routes, GET and POST, tracking
    ``g.transaction`` and (for POST) ``g.response_time``."""
    app = Flask("flask_chest_otel_demo")

    def index() -> str:
        g.start = time.time()
        if request.method == "POST":
            time.sleep(random.uniform(0, work_seconds))  # the POST handler's "work"
            g.transaction = 1
            g.response_time = time.time() - g.start
            return "Hello, World!"
        g.transaction = 1
        g.response_time = time.time() - g.start
        return "Hello, World!"

    for number, route in enumerate(ROUTES):
        view = flask_chest(
            chests=list(chests),
            tracked_vars=TRACKED_VARS,
            request_id_generator=custom_request_id_generator,
        )(index)
        app.add_url_rule(route, f"index{number}", view, methods=["GET", "POST"])
    return app


def _progress(done: int, total: int, out: TextIO) -> None:
    width = 30
    filled = width * done // total
    out.write(f"\r  sending  [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        out.write("\n")
    out.flush()


def _extra_chests(args: argparse.Namespace) -> list[Chest]:
    chests: list[Chest] = []
    if args.influxdb_url:
        from .influxdb import FlaskChestInfluxDB

        where: dict[str, Any] = (
            {"database": args.influxdb_database}
            if args.influxdb_database
            else {"org": args.influxdb_org, "bucket": args.influxdb_bucket}
        )
        chests.append(
            FlaskChestInfluxDB(
                name="InfluxDB",
                url=args.influxdb_url,
                token=args.influxdb_token,
                custom_tags={"app": "flask-chest-otel-demo"},
                **where,
            )
        )
    if args.http_url:
        from .http_payload import FlaskChestCustomWriter

        def cust_payload_generator(context_tuple_list: list[tuple[str, Any, str]]) -> Any:
            return {index: list(item) for index, item in enumerate(context_tuple_list)}

        chests.append(
            FlaskChestCustomWriter(
                name="HTTP", url=args.http_url, payload_generator=cust_payload_generator
            )
        )
    return chests


def demo(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Runs the demo; returns the process exit status (0 when every request landed)."""
    out = out or sys.stdout
    sqlite_chest = FlaskChestSQLite(db_uri=args.db, name="SQLite", export_interval=1.0)
    chests: list[Chest] = [sqlite_chest, *_extra_chests(args)]
    app = build_sample_app(chests)
    client = app.test_client()
    rng = random.Random(args.seed)
    start_ns = time.time_ns()
    sent: dict[tuple[str, str], int] = {}
    out.write(
        f"\nflask_chest_otel demo: flask-chest's sample app, {args.requests} requests, "
        f"chests: {', '.join(chest.name for chest in chests)}\n\n"
    )
    show_progress = out.isatty() or args.progress
    for number in range(1, args.requests + 1):
        route, method = rng.choice(ROUTES), rng.choice(("GET", "POST"))
        response = client.open(route, method=method)
        if response.status_code != 200:
            out.write(f"\n  {method} {route} answered {response.status_code}\n")
            return 1
        sent[route, method] = sent.get((route, method), 0) + 1
        if show_progress and (number % max(1, args.requests // 60) == 0 or number == args.requests):
            _progress(number, args.requests, out)
    flushed = {chest.name: chest.force_flush(timeout_millis=30_000) for chest in chests}
    for chest in chests:
        chest.shutdown()
    status = _report(args.db, start_ns, sent, flushed[sqlite_chest.name], out)
    for chest in chests[1:]:
        status |= _report_target(chest, flushed[chest.name], sent, out)
    out.write(f"  The report of this run (flask-chest-otel report --db {args.db}):\n\n")
    for line in format_table(slis(args.db, since_ns=start_ns)).splitlines():
        out.write(f"  {line}\n" if line else "\n")
    out.write("\n")
    return status


def _target(chest: Chest) -> str:
    """Where a chest writes, fit for the terminal: no credentials, no query."""
    exporter: Any = chest.exporter
    url = safe_url(exporter.url)
    bucket = getattr(exporter, "bucket", None)
    database = getattr(exporter, "database", None)
    if database:
        return f"{url} (database {database})"
    return f"{url} (bucket {bucket})" if bucket else url


def _report_target(
    chest: Chest, flushed: bool, sent: dict[tuple[str, str], int], out: TextIO
) -> int:
    """What the server of one extra chest acknowledged: its exporter counts
    every item the server accepted, refused, or that was lost."""
    stats = chest.exporter.stats_snapshot()
    total_requests = sum(sent.values())
    # Each request is one point per variable (InfluxDB), or one payload (HTTP).
    expected = (
        sum(count * (2 if method == "POST" else 1) for (_, method), count in sent.items())
        if chest.name == "InfluxDB"
        else total_requests
    )
    unit = "points" if chest.name == "InfluxDB" else "payloads"
    out.write(
        f"  {chest.name} at {_target(chest)}: {stats.exported} of {expected} {unit} "
        f"acknowledged by the server, {stats.dropped} refused or lost\n"
    )
    if flushed and stats.exported == expected and not stats.dropped:
        out.write(f"  OK: every request reached {chest.name}\n\n")
        return 0
    out.write(
        f"  MISMATCH: {chest.name} did not acknowledge every request "
        "(its log lines above say why)\n\n"
    )
    return 1


def _report(
    db: str, start_ns: int, sent: dict[tuple[str, str], int], flushed: bool, out: TextIO
) -> int:
    connection = sqlite3.connect(db)
    try:
        stored = {
            (route, method): (requests, transactions, average)
            for route, method, requests, transactions, average in connection.execute(
                "SELECT route, method, count(DISTINCT request_id),"
                " sum(CASE WHEN name = 'transaction' THEN value END),"
                " avg(CASE WHEN name = 'response_time' THEN value END)"
                " FROM flask_chest WHERE time_unix_nano >= ? GROUP BY route, method",
                (start_ns,),
            )
        }
        total_ids, total_transactions, post_average = connection.execute(
            "SELECT count(DISTINCT request_id),"
            " sum(CASE WHEN name = 'transaction' THEN value END),"
            " avg(CASE WHEN name = 'response_time' AND method = 'POST' THEN value END)"
            " FROM flask_chest WHERE time_unix_nano >= ?",
            (start_ns,),
        ).fetchone()
    finally:
        connection.close()

    def ms(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds * 1000:.2f} ms"

    out.write(f"\n  SLIs read back from {db}\n\n")
    out.write(f"  {'route':<15} {'method':<7} {'sent':>6} {'stored':>7} {'transactions':>13}"
              f" {'avg response time':>18}\n")
    out.write("  " + "-" * 70 + "\n")
    for route, method in sorted(sent):
        requests, transactions, average = stored.get((route, method), (0, 0, None))
        out.write(
            f"  {route:<15} {method:<7} {sent[route, method]:>6} {requests:>7}"
            f" {int(transactions or 0):>13} {ms(average if method == 'POST' else None):>18}\n"
        )
    out.write("  " + "-" * 70 + "\n")
    total_sent = sum(sent.values())
    out.write(
        f"  {'total':<15} {'':<7} {total_sent:>6} {total_ids:>7} {int(total_transactions or 0):>13}"
        f" {ms(post_average) + ' (POST)':>18}\n\n"
    )
    if flushed and total_ids == total_sent and int(total_transactions or 0) == total_sent:
        out.write(
            f"  OK: every request landed ({total_sent} sent, {total_ids} request IDs stored)\n"
        )
        out.write(f'  Look inside: sqlite3 {db} "SELECT * FROM flask_chest LIMIT 5"\n\n')
        return 0
    out.write(f"  MISMATCH: {total_sent} requests sent, {total_ids} request IDs stored\n\n")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flask-chest-otel",
        description="flask_chest_otel's command line. 'flask-chest-otel demo' runs "
        "flask-chest's sample app and prints its SLIs.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "demo",
        help="run flask-chest's sample app and print its SLIs",
        description="Runs flask-chest's sample app in-process on the embedded SQLite chest, "
        "sends it requests, prints the SLIs read back from SQLite, and reports what every "
        "other target given (InfluxDB, an HTTP endpoint) acknowledged. Exit status 0 when "
        "every request reached every target.",
    )
    run.add_argument("-n", "--requests", type=int, default=500,
                     help="requests to send (default: 500)")
    run.add_argument("--db", default="flask_chest_demo.sqlite3",
                     help="SQLite file to write (default: flask_chest_demo.sqlite3)")
    run.add_argument("--seed", type=int, default=None,
                     help="seed of the request mix (default: random)")
    run.add_argument("--progress", action="store_true", help="show progress even when piped")
    env = os.environ.get
    influxdb = run.add_argument_group("InfluxDB target (optional)")
    influxdb.add_argument("--influxdb-url", default=env("INFLUXDB_V2_URL"),
                          help="also write to InfluxDB at this URL (env INFLUXDB_V2_URL)")
    influxdb.add_argument("--influxdb-token", default=env("INFLUXDB_V2_TOKEN"),
                          help="API token (env INFLUXDB_V2_TOKEN; never printed)")
    influxdb.add_argument("--influxdb-org", default=env("INFLUXDB_V2_ORG", "my-org"),
                          help="organisation (env INFLUXDB_V2_ORG, else my-org)")
    influxdb.add_argument("--influxdb-bucket", default=env("INFLUXDB_V2_BUCKET", "my-bucket"),
                          help="bucket (env INFLUXDB_V2_BUCKET, else my-bucket)")
    influxdb.add_argument("--influxdb-database", default=None,
                          help="an InfluxDB 1.x database to write to (/write?db=) instead of "
                          "the 2.x org and bucket; --influxdb-token is then optional")
    http = run.add_argument_group("HTTP target (optional)")
    http.add_argument("--http-url", default=env("FLASK_CHEST_DEMO_HTTP_URL"),
                      help="also POST each request's payload to this URL; shown without its "
                      "query or credentials (env FLASK_CHEST_DEMO_HTTP_URL)")
    report = commands.add_parser(
        "report",
        help="print the SLIs of a SQLite chest's file",
        description="Prints, per route and method, the requests, the errors (status 500 or "
        "more; ? when the table has no status_code column) and, for each numeric variable, "
        "count, mean and the nearest-rank 50th, 95th and 99th percentiles.",
    )
    report.add_argument("--db", required=True, help="the SQLite file (opened read-only)")
    report.add_argument("--since", default=None,
                        help="only requests of the last DURATION: 90s, 15m, 2h, 7d "
                        "(default: all)")
    report.add_argument("--route", default=None,
                        help="only this route, as the URL rule (/items/<int:item_id>)")
    report.add_argument("--table", default="flask_chest",
                        help="the chest's table (default: flask_chest)")
    report.add_argument("--format", choices=("table", "json"), default="table",
                        help="table (default) or json: a list of {route, method, requests, "
                        "errors, variables: {name: {count, mean, p50, p95, p99}}}")
    args = parser.parse_args(argv)
    if args.command == "report":
        return _print_report(args, parser)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    return demo(args)


def _print_report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    since_ns = None
    if args.since is not None:
        try:
            since_ns = time.time_ns() - int(parse_duration(args.since) * 1e9)
        except ValueError as exc:
            parser.error(f"--since: {exc}")
    try:
        result = slis(args.db, since_ns=since_ns, route=args.route, table=args.table)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"flask-chest-otel report: {exc}\n")
        return 2
    if args.format == "json":
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(format_table(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
