"""The bench metrics table: one row per per-bundle metric drives the results JSON, the report's
summary table, the CSV, the ratios vs the baseline and `compare`'s regression check.

Adding a metric = one `METRICS.register(Metric(...))` row whose `measure` reads a BundleResult
(what the workers and the in-process checks measured).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from kompakt.errors import ConfigError
from kompakt.measure import ratio
from kompakt.registry import Registry


@dataclass
class BundleResult:
    """Everything measured for one bundle (the JSON `bundles[i]` entry, typed)."""

    name: str
    path: str
    backend: str
    precision: str
    artefact_bytes: int
    bundle_bytes: int
    latency: dict[str, dict] = field(default_factory=dict)  # batch -> latency statistics
    create_s: float | None = None
    first_inference_s: float | None = None
    peak_rss_mib: float | None = None
    baseline_rss_mib: float | None = None
    rss_delta_mib: float | None = None
    accuracy: dict | None = None
    parity: dict | None = None
    golden: dict | None = None  # the bundle's golden samples re-run before timing
    gpu: dict | None = None  # device memory and synchronised GPU timing (GPU runners only)
    scenario: dict | None = None  # an MLPerf LoadGen scenario's result (bench --scenario)
    warnings: list[str] = field(default_factory=list)
    metrics: dict[str, float | None] = field(default_factory=dict)
    vs_baseline: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> BundleResult:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Metric:
    """One per-bundle number.

    Args:
        name: key in `metrics` (lowercase).
        label: column header in reports.
        unit: shown after the label ("" for none).
        better: "lower" or "higher".
        measure: BundleResult -> value, or None when not measured.
        fmt: format spec of the value in reports.
        scale: display multiplier (e.g. 100 for a fraction shown in %).
        regression: `compare` flags a change for the worse beyond this: relative (0.1 = 10 %)
            when `absolute` is False, else in display units (e.g. 0.5 accuracy points);
            None never flags.
    """

    name: str
    label: str
    unit: str
    better: str
    measure: Callable[[BundleResult], float | None]
    fmt: str = ".3f"
    scale: float = 1.0
    regression: float | None = None
    absolute: bool = False

    def __post_init__(self) -> None:
        if self.better not in ("lower", "higher"):
            raise ConfigError(f"metric {self.name}: better must be 'lower' or 'higher'")

    def format(self, value: float | None) -> str:
        return "–" if value is None else f"{value * self.scale:{self.fmt}}"

    def worse_by(self, old: float, new: float) -> float:
        """How much worse `new` is than `old` (> 0 = worse), in the unit `regression` uses."""
        diff = (new - old) if self.better == "lower" else (old - new)
        if self.absolute:
            return diff * self.scale
        return diff / abs(old) if old else 0.0

    def ratio(self, base: float, value: float) -> float | None:
        """> 1 means `value` is better than `base` (`kompakt.measure.ratio`)."""
        return ratio(base, value, self.better)


METRICS: Registry = Registry("metric")


def register(metric: Metric) -> Metric:
    METRICS.register(metric.name, help=f"{metric.label} ({metric.better} is better)")(metric)
    return metric


def _get(section: str, key: str) -> Callable[[BundleResult], float | None]:
    def read(result: BundleResult) -> float | None:
        value = (getattr(result, section) or {}).get(key)
        return float(value) if value is not None else None

    return read


register(
    Metric(
        "artefact_kib",
        "artefact",
        "KiB",
        "lower",
        lambda r: r.artefact_bytes / 1024,
        ".1f",
        regression=0.10,
    )
)
register(Metric("bundle_kib", "bundle", "KiB", "lower", lambda r: r.bundle_bytes / 1024, ".1f"))
register(
    Metric(
        "peak_rss_mib", "peak RSS", "MiB", "lower", lambda r: r.peak_rss_mib, ".1f", regression=0.10
    )
)
register(
    Metric("rss_delta_mib", "RSS over runtime", "MiB", "lower", lambda r: r.rss_delta_mib, ".1f")
)


def _scenario(better: str) -> Callable[[BundleResult], float | None]:
    def read(result: BundleResult) -> float | None:
        run = result.scenario or {}
        return run.get("value") if run.get("better") == better else None

    return read


register(
    Metric(
        "loadgen_latency_ms",
        "LoadGen latency (p90 single / p99 multi-stream)",
        "ms",
        "lower",
        _scenario("lower"),
        ".3f",
        regression=0.10,
    )
)
register(
    Metric(
        "loadgen_throughput",
        "LoadGen samples/s (offline) or QPS at the bound (server)",
        "/s",
        "higher",
        _scenario("higher"),
        ".1f",
        regression=0.10,
    )
)
register(Metric("create_s", "create", "s", "lower", lambda r: r.create_s, ".3f"))
register(
    Metric(
        "first_inference_ms",
        "first run",
        "ms",
        "lower",
        lambda r: None if r.first_inference_s is None else r.first_inference_s * 1e3,
        ".2f",
    )
)
register(
    Metric(
        "top1",
        "top-1",
        "%",
        "higher",
        _get("accuracy", "top1"),
        ".2f",
        scale=100,
        regression=0.5,
        absolute=True,
    )
)
register(Metric("rmse", "RMSE", "", "lower", _get("accuracy", "rmse"), ".4f", regression=0.05))
register(
    Metric(
        "parity_max_rel",
        "parity vs PyTorch (max rel)",
        "",
        "lower",
        _get("parity", "max_rel"),
        ".2e",
    )
)
register(
    Metric(
        "golden_max_rel", "golden drift (max rel)", "", "lower", _get("golden", "max_rel"), ".2e"
    )
)


def measure_all(result: BundleResult) -> dict[str, float | None]:
    """Every registered metric of one bundle (None where not measured)."""
    return {name: METRICS.get(name).measure(result) for name in METRICS.names()}


def measured(results: list[dict]) -> list[Metric]:
    """The metrics at least one bundle has a value for, in registry order."""
    return [
        METRICS.get(name)
        for name in METRICS.names()
        if any((b.get("metrics") or {}).get(name) is not None for b in results)
    ]
