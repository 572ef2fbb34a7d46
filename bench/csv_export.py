"""CSV export of a 10,000,000-point run: time to the first byte, total time, throughput and the
server's memory growth while it streams.

Generates the points inside PostgreSQL (as bench/ingest.py does), serves with the production
HTTP server (bin/serve-http), and reads `GET /convergence/{id}/data?format=csv` with and
without `metric` (one series, and the whole run in long form) over a raw socket, sampling the
server's VmRSS every 20 ms. Each form is read `--rounds` times, alternating; medians are
quoted.

    .venv/bin/python bench/csv_export.py [--points 10000000] [--rounds 3]
"""

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from ingest import BASE_TIME, series_of  # noqa: E402

SERVE_HTTP = str(common.ROOT / "bin" / "serve-http")
CHUNK = 1 << 20


def load(simulation_id: int, total: int) -> tuple[float, int]:
    """`total` loss points and a tenth as many val/loss points, generated in PostgreSQL."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(common.DATABASE_URL) as conn:
        for metric, every in (("loss", 1), ("val/loss", 10)):
            series_id = series_of(conn, simulation_id, metric)
            conn.execute(
                """
                INSERT INTO convergence_data (simulation_id, series_id, step, timestamp,
                    loss_value)
                SELECT %s, %s, g, %s::timestamptz + g * interval '1 millisecond',
                    2.5 * exp(-g / 2500000.0) + 0.05 * sin(g * 0.37) + 0.1
                FROM generate_series(0, %s - 1, %s) AS g
                """,
                [simulation_id, series_id, BASE_TIME, total, every],
            )
        conn.execute("ANALYZE convergence_data")
    return time.perf_counter() - started, total + (total + 9) // 10


def rss_mib(server: common.Server) -> float:
    """Resident set of the server and its worker processes (bin/serve-http forks uvicorn)."""
    total = 0.0
    for pid in [server.proc.pid, *common._children(server.proc.pid)]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


class RssSampler(threading.Thread):
    """The server's resident set every 20 ms, while a request runs."""

    def __init__(self, server: common.Server):
        super().__init__(daemon=True)
        self.server, self.samples, self.done = server, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(rss_mib(self.server))
            time.sleep(0.02)


def export(server: common.Server, token: str, path: str) -> dict:
    """One streamed GET over a raw socket: first byte, total time, bytes, lines, RSS growth."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {common.HOST}\r\nAuthorization: Token {token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    before = rss_mib(server)
    sampler = RssSampler(server)
    sampler.start()
    started = time.perf_counter()
    first_byte = None
    size = lines = 0
    head = b""
    with socket.create_connection((common.HOST, server.port)) as sock:
        sock.sendall(request)
        while chunk := sock.recv(CHUNK):
            if first_byte is None:
                first_byte = time.perf_counter() - started
            size += len(chunk)
            lines += chunk.count(b"\n")
            if len(head) < 512:
                head += chunk[:512]
    total = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    status = head.split(b"\r\n", 1)[0].decode()
    if " 200 " not in status:
        raise RuntimeError(f"{path}: {status}")
    return {
        "first_byte": first_byte,
        "total": total,
        "mib": size / 2**20,
        "lines": lines,
        "growth": max(sampler.samples, default=before) - before,
        "before": before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()

    common.fresh_database()
    common.django_setup()
    token, [sim] = common.make_fixtures(simulations=1)
    load_seconds, rows = load(sim, args.points)
    print(f"loaded {rows:,} rows in {load_seconds:.0f} s", flush=True)

    forms = {
        "one series (`?metric=loss&format=csv`)": f"/convergence/{sim}/data?metric=loss&format=csv",
        "whole run, long form (`?format=csv`)": f"/convergence/{sim}/data?format=csv",
    }
    results = {label: [] for label in forms}
    argv = [SERVE_HTTP]
    env = {"HOST": common.HOST, "PORT": "{port}", "WEB_CONCURRENCY": "1"}
    try:
        with common.Server(argv=argv, **env) as server:
            export(server, token, f"/convergence/{sim}/data?metric=loss&format=csv&limit=10")
            for _ in range(args.rounds):
                for label, path in forms.items():
                    r = export(server, token, path)
                    results[label].append(r)
                    print(
                        f"{label}: first byte {r['first_byte'] * 1000:.0f} ms, "
                        f"{r['total']:.1f} s, {r['lines']:,} lines, {r['mib']:.0f} MiB, "
                        f"{r['lines'] / r['total']:,.0f} rows/s, RSS +{r['growth']:.1f} MiB "
                        f"(from {r['before']:.0f})",
                        flush=True,
                    )
    finally:
        common.drop_database()

    lines = [
        "| export | first byte (median) | total | rows/s | size | server RSS growth (max) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, runs in results.items():
        median = statistics.median
        lines.append(
            f"| {label} | **{median(r['first_byte'] for r in runs) * 1000:.0f} ms** "
            f"| {median(r['total'] for r in runs):.1f} s "
            f"| {median(r['lines'] / r['total'] for r in runs):,.0f} "
            f"| {runs[0]['mib']:.0f} MiB, {runs[0]['lines']:,} lines "
            f"| **+{max(r['growth'] for r in runs):.1f} MiB** |"
        )
    lines += [
        "",
        f"{args.points:,} `loss` points and {rows - args.points:,} `val/loss` points in one "
        f"simulation, generated in PostgreSQL; {args.rounds} rounds per form, alternating, over "
        "one raw socket, against bin/serve-http (one uvicorn worker). Targets: first byte "
        "< 1 s, memory growth < 50 MB, whatever the run's size.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_results:
        common.write_section(
            "csv_export",
            f"CSV export at {args.points / 1e6:.0f}M points (bench/csv_export.py)",
            f".venv/bin/python bench/csv_export.py --points {args.points} --rounds {args.rounds}",
            body,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
