"""Counters, gauges and histograms, and their Prometheus text exposition (format 0.0.4).

Each role keeps one Registry (bbx/master/metrics.py, bbx/slave/metrics.py) whose metrics the
code that owns an event bumps with one line; bbx/web.py serves `Registry.render()` at
/metrics. No Twisted here, so the hooks cost nothing to import.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

# Prometheus' text format, version 0.0.4 (the Content-Type scrapers expect).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets in seconds, from sub-millisecond loopback round trips to a stalled disk:
# Prometheus' client default set, with 0.5 ms and 1 ms added below it.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if math.isnan(value):
            return "NaN"
        return repr(value)
    return str(value)


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        self.name = name
        self.help = help
        self.labels = tuple(labels)

    def _key(self, labels: dict) -> tuple:
        return tuple(str(labels.get(n, "")) for n in self.labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A count that only goes up (per label set)."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        super().__init__(name, help, labels)
        self.values: dict[tuple, float] = {} if self.labels else {(): 0}

    def inc(self, amount: float = 1, **labels) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0) + amount

    def value(self, **labels) -> float:
        return self.values.get(self._key(labels), 0)

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(self.labels, k)} {_number(v)}"
                for k, v in sorted(self.values.items())]


class Gauge(_Metric):
    """A value that goes up and down: set it, or give a function read at every scrape
    (returning a number, or {label value tuple: number} for labelled gauges)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (),
                 read: Callable[[], float | dict] | None = None):
        super().__init__(name, help, labels)
        self.read = read
        self.values: dict[tuple, float] = {}

    def set(self, value: float, **labels) -> None:
        self.values[self._key(labels)] = value

    def current(self) -> dict[tuple, float]:
        if self.read is None:
            return dict(self.values) if self.values or self.labels else {(): 0}
        value = self.read()
        return dict(value) if isinstance(value, dict) else {(): value}

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(self.labels, k)} {_number(v)}"
                for k, v in sorted(self.current().items())]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float] = LATENCY_BUCKETS):
        super().__init__(name, help)
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def time(self, deferred, clock) -> None:
        """Observe how long `deferred` takes to fire (either way), on `clock`'s time."""
        started = clock.seconds()

        def done(result):
            self.observe(clock.seconds() - started)
            return result

        deferred.addBoth(done)

    def lines(self) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            out.append(f'{self.name}_bucket{{le="{_number(float(bound))}"}} {running}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{self.name}_sum {_number(self.sum)}")
        out.append(f"{self.name}_count {self.count}")
        return out


class Registry:
    """The metrics of one process role, in the order they were made."""

    def __init__(self):
        self.metrics: dict[str, _Metric] = {}

    def _add(self, metric):
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels: Iterable[str] = (), read=None) -> Gauge:
        return self._add(Gauge(name, help, labels, read))

    def histogram(self, name: str, help: str, buckets: Iterable[float] = LATENCY_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, buckets))

    def render(self) -> str:
        """Every metric in Prometheus' text format."""
        out: list[str] = []
        for metric in self.metrics.values():
            try:
                lines = metric.lines()
            except Exception as e:  # a gauge whose source is gone must not break the scrape
                out.append(f"# {metric.name}: unavailable ({type(e).__name__})")
                continue
            out += metric.header() + lines
        return "\n".join(out) + "\n"


def parse(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (for tests and `bbx doctor`)."""
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    return values
