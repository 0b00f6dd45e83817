"""The server's counters, as Prometheus text (no client library: a handful of counters and histograms)."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [
            f'{name}_bucket{{{labels}{sep}le="{edge:g}"}} {n}'
            for edge, n in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.sum:.6f}", f"{name}_count{braces} {self.total}"]
        return out


class ServerMetrics:
    """Requests (by experiment and status code), rows, request latency and batch sizes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.rows: dict[str, int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)

    def request(self, experiment: str, code: int, rows: int, seconds: float) -> None:
        with self._lock:
            self.requests[(experiment, code)] += 1
            if code == 200:
                self.rows[experiment] += rows
                self.latency.setdefault(experiment, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, rows: int) -> None:
        with self._lock:
            self.batches.observe(rows)

    def render(self, loaded: int) -> str:
        with self._lock:
            lines = [
                "# HELP lorakit_requests_total Prediction requests by experiment and HTTP status.",
                "# TYPE lorakit_requests_total counter",
            ]
            lines += [
                f'lorakit_requests_total{{experiment="{_esc(e)}",code="{c}"}} {n}'
                for (e, c), n in sorted(self.requests.items())
            ]
            lines += ["# HELP lorakit_rows_total Texts predicted.", "# TYPE lorakit_rows_total counter"]
            lines += [
                f'lorakit_rows_total{{experiment="{_esc(e)}"}} {n}' for e, n in sorted(self.rows.items())
            ]
            lines += [
                "# HELP lorakit_request_seconds Time from request to answer.",
                "# TYPE lorakit_request_seconds histogram",
            ]
            for e, hist in sorted(self.latency.items()):
                lines += hist.lines("lorakit_request_seconds", f'experiment="{_esc(e)}"')
            lines += [
                "# HELP lorakit_batch_rows Rows per forward batch.",
                "# TYPE lorakit_batch_rows histogram",
            ]
            lines += self.batches.lines("lorakit_batch_rows", "")
            lines += [
                "# HELP lorakit_experiments_loaded Experiments loaded.",
                "# TYPE lorakit_experiments_loaded gauge",
                f"lorakit_experiments_loaded {loaded}",
            ]
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
