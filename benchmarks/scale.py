"""Scale benchmark: time and peak memory of the low-rank pipeline from 10k to 1M cells on one machine.

For each size the counts are simulated once into an ``.h5ad`` file under ``--data-dir`` (reused when its
parameters match) by a memory-bounded generator: cells are drawn chunk by chunk, each chunk dense only while
it is drawn, and appended as CSR to resizable HDF5 datasets, so neither the generator nor anything else holds
the whole matrix. The cells have low-rank structure: a log-normal gene frequency profile, 10 cell types (each
shifting about 10% of the genes) and 5 continuous programs through a softmax over genes, times a log-normal
library size around a median of 1,200 molecules, and Poisson counts. The truth is drawn from one stream of
``np.random.default_rng(seed)`` and every chunk from its own child stream (``spawn``), so a file is the same
for a given seed, shape and chunk size.

Each size (and each repeat) then runs in a fresh interpreter (``--run-one``) so that its peak memory is its
own. The worker reads the file with ``anndata.read_h5ad`` (step ``read_h5ad``) and calls
``scn2s.pp.denoise(adata, method="lowrank", rng=0, progress=False)``, with ``output="factors"`` when
``denoise`` has that parameter (otherwise the dense ``float32`` layer is written, and sizes whose layer is
larger than ``--max-dense-gib`` are skipped). Steps are timed from the start and end records that
:class:`scn2s._timing.Timings` logs on the ``scn2s.timing`` logger: a handler stamps each with
``time.perf_counter()``; repeated entries of a step are summed, and the time of ``denoise`` outside any
step is reported as ``other``. A thread samples the resident set (``VmRSS``) every 50 ms, and at every step
boundary; the peak of a step is the largest sample inside its intervals, and the peak of the run is
``VmHWM``. The CSR size of the input (data + indices + indptr bytes) is given beside it. Workers import the
``scn2s`` of this checkout (its root first on ``PYTHONPATH``), or the installed one with ``--installed-scn2s``;
``--threads`` sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` of the workers, which
torch also follows when a worker imports it.

The parent merges each size's result into ``--out`` (JSON; medians over ``--repeats`` runs, and every run),
prints a Markdown table and the least-squares slope of log time against log non-zeros over the sizes with
2,000 genes.

Run from the repository root::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/scale.py --sizes 10k,100k
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import inspect
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from common import RESULTS, peak_rss_mib

SIZES = {"10k": (10_000, 2_000), "100k": (100_000, 2_000), "300k": (300_000, 2_000), "1M": (1_000_000, 2_000)}
SIZES["100kx20k"] = (100_000, 20_000)
DEFAULT_DATA_DIR = Path("/tmp/scn2s-scale")
GENERATOR_VERSION = 1
CHUNK_ENTRIES = 2**23  # dense entries per generated chunk: 4,194 cells at 2k genes, 419 at 20k
H5_CHUNK = 2**20  # elements per HDF5 chunk of X/data and X/indices
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
SAMPLE_SECONDS = 0.05
MIB = 2**20
READ_STEP = "read_h5ad"  # the worker's own step, timed around anndata.read_h5ad
REPO_ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the table)."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# memory-bounded generator


@dataclass(frozen=True)
class SimParams:
    """Parameters of a simulated file; equal parameters give the same file."""

    n_cells: int
    n_genes: int
    depth: float = 1200.0
    depth_spread: float = 0.4
    n_types: int = 10
    n_programs: int = 5
    seed: int = 0
    chunk_cells: int = 0  # 0: CHUNK_ENTRIES // n_genes
    version: int = GENERATOR_VERSION

    def __post_init__(self) -> None:
        if self.chunk_cells == 0:
            object.__setattr__(self, "chunk_cells", max(1, CHUNK_ENTRIES // self.n_genes))

    @property
    def n_chunks(self) -> int:
        return -(-self.n_cells // self.chunk_cells)

    def file_name(self) -> str:
        return f"sim_{self.n_cells}x{self.n_genes}_depth{self.depth:g}_seed{self.seed}_v{self.version}.h5ad"

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class Truth:
    """Gene-level truth shared by all chunks."""

    baseline: np.ndarray  # (genes,) log frequency profile
    type_weights: np.ndarray  # (types,)
    type_effect: np.ndarray  # (types, genes)
    loadings: np.ndarray  # (programs, genes)


def draw_truth(params: SimParams, rng: np.random.Generator) -> Truth:
    g = params.n_genes
    baseline = rng.normal(0.0, 1.5, g)
    type_weights = rng.dirichlet(np.full(params.n_types, 2.0))
    type_effect = (rng.random((params.n_types, g)) < 0.1) * rng.normal(0.0, 1.2, (params.n_types, g))
    loadings = rng.normal(0.0, 0.4, (params.n_programs, g)) * (rng.random((params.n_programs, g)) < 0.3)
    return Truth(baseline, type_weights, type_effect, loadings)


def draw_chunk(truth: Truth, params: SimParams, n: int, rng: np.random.Generator):
    """``n`` cells: CSR int32 counts (sorted indices, no explicit zeros), cell types and library sizes."""
    from scipy import sparse

    cell_type = rng.choice(params.n_types, size=n, p=truth.type_weights)
    scores = rng.normal(0.0, 1.0, (n, params.n_programs))
    library = params.depth * np.exp(rng.normal(0.0, params.depth_spread, n))
    rates = scores @ truth.loadings
    rates += truth.baseline
    rates += truth.type_effect[cell_type]
    rates -= rates.max(axis=1, keepdims=True)
    np.exp(rates, out=rates)
    rates *= (library / rates.sum(axis=1))[:, None]
    counts = rng.poisson(rates).astype(np.int32)
    del rates
    csr = sparse.csr_matrix(counts)
    del counts
    csr.sort_indices()
    return csr, cell_type, library


def _write_elem():
    try:
        from anndata.io import write_elem  # anndata >= 0.11
    except ImportError:  # pragma: no cover - older anndata
        from anndata.experimental import write_elem
    return write_elem


def generate(params: SimParams, path: Path) -> dict:
    """Write the simulated ``.h5ad`` to ``path`` (via a ``.partial`` file); return statistics."""
    import h5py
    import pandas as pd

    write_elem = _write_elem()
    start = time.perf_counter()
    truth_rng, chunk_root = np.random.default_rng(params.seed).spawn(2)
    truth = draw_truth(params, truth_rng)
    chunk_rngs = chunk_root.spawn(params.n_chunks)
    cell_type = np.empty(params.n_cells, dtype=np.int8)
    library = np.empty(params.n_cells, dtype=np.float32)
    n_counts = np.empty(params.n_cells, dtype=np.int64)
    partial = path.with_name(path.name + ".partial")
    nnz = 0
    with h5py.File(partial, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        X = f.create_group("X")
        X.attrs["encoding-type"] = "csr_matrix"
        X.attrs["encoding-version"] = "0.1.0"
        X.attrs["shape"] = np.array([params.n_cells, params.n_genes], dtype=np.int64)
        data = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(H5_CHUNK,))
        indices = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(H5_CHUNK,))
        indptr = X.create_dataset("indptr", shape=(1,), maxshape=(None,), dtype=np.int64, chunks=(H5_CHUNK,))
        indptr[0] = 0
        for i, rng in enumerate(chunk_rngs):
            lo = i * params.chunk_cells
            hi = min(lo + params.chunk_cells, params.n_cells)
            csr, types, lib = draw_chunk(truth, params, hi - lo, rng)
            k = csr.nnz
            data.resize((nnz + k,))
            data[nnz:] = csr.data
            indices.resize((nnz + k,))
            indices[nnz:] = csr.indices
            indptr.resize((hi + 1,))
            indptr[lo + 1 :] = csr.indptr[1:].astype(np.int64) + nnz
            nnz += k
            cell_type[lo:hi], library[lo:hi] = types, lib
            n_counts[lo:hi] = np.asarray(csr.sum(axis=1)).ravel()
            if (i + 1) % 50 == 0:
                log(f"  chunk {i + 1}/{params.n_chunks}: {hi} cells, {nnz:,} non-zeros")
        obs = pd.DataFrame(
            {
                "cell_type": pd.Categorical.from_codes(cell_type, [f"type_{t}" for t in range(params.n_types)]),
                "library_size": library,
                "n_counts": n_counts,
            },
            index=pd.Index([f"cell_{i}" for i in range(params.n_cells)]),
        )
        var = pd.DataFrame({"baseline": truth.baseline}, index=pd.Index([f"gene_{j}" for j in range(params.n_genes)]))
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        write_elem(f, "uns", {"scale_simulation": asdict(params)})
        for key in ("layers", "obsm", "varm", "obsp", "varp"):
            write_elem(f, key, {})
        seconds = time.perf_counter() - start
        stats = {
            "nnz": int(nnz),
            "density": nnz / (params.n_cells * params.n_genes),
            "median_umis": float(np.median(n_counts)),
            "mean_nnz_per_cell": nnz / params.n_cells,
            "generation_s": seconds,
            "generation_peak_rss_mib": peak_rss_mib(),
        }
        f.attrs["scn2s-scale-params"] = params.key()
        f.attrs["scn2s-scale-stats"] = json.dumps(stats)
    partial.replace(path)
    stats["file_mib"] = path.stat().st_size / MIB
    return stats


def cached_stats(params: SimParams, path: Path) -> dict | None:
    """Statistics of ``path`` if it exists and was written with ``params``; else None."""
    import h5py

    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("scn2s-scale-params") != params.key():
                return None
            stats = json.loads(f.attrs["scn2s-scale-stats"])
    except (OSError, KeyError, ValueError):
        return None
    return stats | {"file_mib": path.stat().st_size / MIB}


def check_file(path: Path, params: SimParams) -> dict:
    """Open ``path`` backed and check the first chunk's CSR invariants (dtype, sorted indices, no zeros)."""
    import anndata as ad

    backed = ad.read_h5ad(path, backed="r")
    try:
        shape_ok = backed.shape == (params.n_cells, params.n_genes)
        head = backed.X[: min(params.chunk_cells, params.n_cells)]
        ok = (
            shape_ok
            and head.dtype == np.int32
            and head.has_sorted_indices
            and bool((head.data > 0).all())
            and head.shape[1] == params.n_genes
        )
    finally:
        backed.file.close()
    return {"backed_check": bool(ok)}


# --------------------------------------------------------------------------------------------------------------
# worker: one size in a fresh process


def current_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class RssSampler:
    """A daemon thread appending ``(perf_counter, VmRSS KiB)`` every ``interval`` seconds."""

    def __init__(self, interval: float = SAMPLE_SECONDS) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        """Append a sample now and return its time stamp (a step boundary counts in both steps it divides)."""
        now = time.perf_counter()
        self.samples.append((now, current_rss_kib()))
        return now

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


class StepRecorder(logging.Handler):
    """Collects ``(step, start, end)`` intervals from the ``scn2s.timing`` records; samples RSS at each."""

    def __init__(self, sampler: RssSampler) -> None:
        super().__init__(level=logging.DEBUG)
        self.sampler = sampler
        self.open: dict[str, list[float]] = {}
        self.intervals: list[tuple[str, float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        now = self.sampler.sample()
        step, phase = getattr(record, "step", None), getattr(record, "phase", None)
        if step is None:
            return
        if phase == "start":
            self.open.setdefault(step, []).append(now)
        elif phase == "end" and self.open.get(step):
            self.intervals.append((step, self.open[step].pop(), now))


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Disjoint sorted intervals covering the same time as ``intervals`` (nested or overlapping steps)."""
    merged: list[tuple[float, float]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    return sum(hi - lo for lo, hi in _merge(intervals))


def _peak_in(samples: np.ndarray, intervals: list[tuple[float, float]]) -> float:
    inside = np.zeros(len(samples), dtype=bool)
    for lo, hi in intervals:
        inside |= (samples[:, 0] >= lo) & (samples[:, 0] <= hi)
    return float(samples[inside, 1].max()) / 1024 if inside.any() else float("nan")


def run_one(args: argparse.Namespace) -> None:
    """Read the file, run ``pp.denoise``, and write time and memory per step to ``args.result``."""
    import anndata as ad

    import scn2s
    from scn2s import pp

    if args.threads and "torch" in sys.modules:  # torch otherwise takes OMP_NUM_THREADS when imported
        sys.modules["torch"].set_num_threads(args.threads)
    sampler = RssSampler()
    recorder = StepRecorder(sampler)
    loggers = timing_loggers()
    for timing_logger in loggers:
        timing_logger.addHandler(recorder)
        timing_logger.setLevel(logging.DEBUG)
    sampler.start()
    rss_start = current_rss_kib() / 1024
    kwargs: dict = {"method": "lowrank", "rng": 0, "progress": False}
    if "output" in inspect.signature(pp.denoise).parameters:
        kwargs["output"] = "factors"

    start = sampler.sample()
    adata = ad.read_h5ad(args.run_one)
    read_end = sampler.sample()
    X = adata.X
    csr_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    denoise_start = sampler.sample()
    pp.denoise(adata, **kwargs)
    end = sampler.sample()
    sampler.stop()
    for timing_logger in loggers:
        timing_logger.removeHandler(recorder)

    samples = np.array(sampler.samples, dtype=np.float64)
    steps: dict[str, dict] = {}
    for name, lo, hi in recorder.intervals:
        steps.setdefault(name, {"seconds": 0.0, "intervals": []})
        steps[name]["seconds"] += hi - lo
        steps[name]["intervals"].append((lo, hi))
    inner = [(max(lo, denoise_start), min(hi, end)) for _, lo, hi in recorder.intervals]
    inner = [(lo, hi) for lo, hi in inner if hi > lo]
    other_seconds = (end - denoise_start) - _union_seconds(inner)
    # the parts of denoise outside every step
    bounds = [denoise_start, *(t for interval in _merge(inner) for t in interval), end]
    outside = list(zip(bounds[::2], bounds[1::2], strict=True))
    step_seconds = {READ_STEP: read_end - start} | {name: s["seconds"] for name, s in steps.items()}
    step_peak = {READ_STEP: _peak_in(samples, [(start, read_end)])}
    step_peak |= {name: _peak_in(samples, s["intervals"]) for name, s in steps.items()}
    step_seconds["other"] = other_seconds
    step_peak["other"] = _peak_in(samples, [(lo, hi) for lo, hi in outside if hi > lo])
    total = end - start
    record = adata.uns.get("denoised", {})
    result = {
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "nnz": int(X.nnz),
        "csr_mib": csr_bytes / MIB,
        "x_dtypes": [str(X.data.dtype), str(X.indices.dtype), str(X.indptr.dtype)],
        "kwargs": kwargs,
        "total_s": total,
        "denoise_s": end - denoise_start,
        "step_seconds": step_seconds,
        "step_peak_rss_mib": step_peak,
        "steps_sum_s": sum(step_seconds.values()),
        "steps_union_s": (read_end - start) + _union_seconds(inner) + other_seconds,
        "unclosed_steps": [name for name, starts in recorder.open.items() if starts],
        "rss_start_mib": rss_start,
        "peak_rss_mib": peak_rss_mib(),
        "n_samples": len(samples),
        "rank": int(record["best_params"]["rank"]) if "best_params" in record else None,
        "split_rank": _get(record, "selection", "lowrank", "split_rank"),
        "uns_timings": _plain(record.get("timings")),
        "uns_elapsed_s": _plain(record.get("elapsed_seconds")),
        "written": sorted(adata.layers.keys()) + [f"obsm:{k}" for k in adata.obsm] + [f"varm:{k}" for k in adata.varm],
        "load": os.getloadavg(),
        "threads": {v: os.environ.get(v) for v in THREAD_VARIABLES},
        "scn2s_path": str(Path(scn2s.__file__).parent),
    }
    Path(args.result).write_text(json.dumps(result, indent=1))


def timing_loggers() -> list[logging.Logger]:
    """The logger :class:`scn2s._timing.Timings` writes to: ``scn2s.timing``, or the module's own if renamed."""
    from scn2s import _timing

    loggers = [logging.getLogger("scn2s.timing")]
    own = getattr(_timing, "logger", None)
    if isinstance(own, logging.Logger) and own not in loggers:
        loggers.append(own)
    return loggers


def _get(record: dict, *keys):
    for key in keys:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return _plain(record)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def generate_one(args: argparse.Namespace) -> None:
    params = SimParams(**json.loads(args.generate_one))
    path = Path(args.result).with_name(params.file_name())
    stats = generate(params, path)
    stats |= check_file(path, params)
    Path(args.result).with_suffix(".json").write_text(json.dumps(stats))


# --------------------------------------------------------------------------------------------------------------
# parent


def parse_size(text: str) -> tuple[str, int, int]:
    """``10k``, ``1M``, ``100kx20k`` (cells x genes; genes default 2,000) -> label, cells, genes."""
    if text in SIZES:
        return (text, *SIZES[text])

    def number(part: str) -> int:
        scale = {"k": 1_000, "M": 1_000_000}.get(part[-1:], 1)
        return int(float(part[:-1] if scale > 1 else part) * scale)

    cells, _, genes = text.partition("x")
    try:
        return text, number(cells), number(genes) if genes else 2_000
    except ValueError:
        msg = f"size {text!r}: give cells[xgenes] like 10k, 1M or 100kx20k."
        raise argparse.ArgumentTypeError(msg) from None


def child_env(args: argparse.Namespace) -> dict:
    """Environment of a worker: ``--threads`` BLAS threads; this checkout's scn2s unless ``--installed-scn2s``."""
    threads = args.threads
    env = dict(os.environ)
    if not args.installed_scn2s:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if threads > 0:
        env |= dict.fromkeys(THREAD_VARIABLES, str(threads))
    return env


def ensure_data(params: SimParams, data_dir: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """The file for ``params``, generated in a subprocess unless cached; and its statistics."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / params.file_name()
    stats = cached_stats(params, path)
    if stats is not None:
        log(f"[{params.n_cells}x{params.n_genes}] cached {path} ({stats['file_mib']:.0f} MiB)")
        return path, stats | {"cached": True}
    log(f"[{params.n_cells}x{params.n_genes}] generating {path} ({params.n_chunks} chunks of {params.chunk_cells})")
    stats_file = path.with_name(path.name + ".stats")
    command = [sys.executable, __file__, "--generate-one", params.key(), "--result", str(stats_file)]
    try:
        done = subprocess.run(command, env=child_env(args), timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        path.with_name(path.name + ".partial").unlink(missing_ok=True)
        raise
    if done.returncode != 0:
        msg = f"generating {path} failed with exit code {done.returncode}."
        raise RuntimeError(msg)
    stats_json = stats_file.with_suffix(".json")
    stats = json.loads(stats_json.read_text())
    stats_json.unlink()
    log(
        f"[{params.n_cells}x{params.n_genes}] generated in {stats['generation_s']:.1f} s "
        f"(peak RSS {stats['generation_peak_rss_mib']:.0f} MiB): {stats['file_mib']:.0f} MiB, "
        f"{stats['nnz']:,} non-zeros, median {stats['median_umis']:.0f} UMIs/cell"
    )
    return path, stats | {"cached": False}


def spawn_run(path: Path, args: argparse.Namespace, label: str) -> dict:
    result_file = path.with_name(f"{path.stem}.result.{os.getpid()}.json")
    command = [sys.executable, __file__, "--run-one", str(path), "--result", str(result_file)]
    command += ["--threads", str(args.threads)]
    try:
        done = subprocess.run(
            command, env=child_env(args), timeout=args.timeout, check=False, capture_output=True, text=True
        )
    except subprocess.TimeoutExpired:
        log(f"[{label}] timed out after {args.timeout} s")
        return {"error": f"timed out after {args.timeout} s"}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-5:]
        log(f"[{label}] failed (exit code {done.returncode}):\n" + "\n".join(tail))
        return {"error": f"exit code {done.returncode}: {' | '.join(tail)}"}
    result = json.loads(result_file.read_text())
    result_file.unlink()
    return result


def median_result(runs: list[dict]) -> dict:
    """Medians over the successful runs of every timing and memory figure."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"]}
    out = dict(ok[0])
    for key in ("total_s", "denoise_s", "peak_rss_mib", "steps_sum_s", "steps_union_s", "rss_start_mib"):
        out[key] = float(np.median([r[key] for r in ok]))
    for key in ("step_seconds", "step_peak_rss_mib"):
        names = dict.fromkeys(name for r in ok for name in r[key])
        out[key] = {n: _median([r[key].get(n, np.nan) for r in ok]) for n in names}
    out["runs_total_s"] = [r["total_s"] for r in runs if "error" not in r]
    out["failed_runs"] = len(runs) - len(ok)
    return out


def _median(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def dense_layer_gib(n_cells: int, n_genes: int) -> float:
    return n_cells * n_genes * 4 / 2**30


def has_output_parameter() -> bool:
    from scn2s import pp

    return "output" in inspect.signature(pp.denoise).parameters


def slopes(results: dict) -> dict[str, tuple[float, int]]:
    """Least-squares slope of log seconds on log non-zeros over the 2,000-gene sizes, per column."""
    rows = [r for r in results.values() if "total_s" in r and r["n_genes"] == 2_000]
    out = {}
    columns = {"total": lambda r: r["total_s"]}
    for name in dict.fromkeys(n for r in rows for n in r["step_seconds"]):
        columns[name] = lambda r, n=name: r["step_seconds"].get(n, np.nan)
    for name, get in columns.items():
        points = [(np.log(r["nnz"]), np.log(get(r))) for r in rows if np.isfinite(get(r)) and get(r) > 0]
        if len({x for x, _ in points}) >= 2:
            x, y = np.array(points).T
            out[name] = (float(np.polyfit(x, y, 1)[0]), len(points))
    return out


def _fmt_s(value: float) -> str:
    return "-" if not np.isfinite(value) else (f"{value:.2f}" if value < 10 else f"{value:.1f}")


def table(results: dict) -> str:
    done = {k: r for k, r in results.items() if "total_s" in r}
    steps = list(dict.fromkeys(n for r in done.values() for n in r["step_seconds"] if n != "other"))
    steps.append("other")
    header = "| size | cells | genes | nnz | CSR MiB |" + "".join(f" {s} s |" for s in steps)
    header += " total s | RSS before read MiB |" + "".join(f" {s} peak MiB |" for s in steps)
    header += " peak RSS MiB | peak / CSR |"
    lines = [header, "|---|" + "---:|" * (header.count("|") - 2)]
    for label, r in results.items():
        if "total_s" not in r:
            why = r.get("skipped") or r.get("error", "no result")
            lines.append(f"| {label} | {r.get('n_cells', '')} | {r.get('n_genes', '')} | {why} |")
            continue
        row = f"| {label} | {r['n_cells']:,} | {r['n_genes']:,} | {r['nnz']:,} | {r['csr_mib']:.0f} |"
        row += "".join(f" {_fmt_s(r['step_seconds'].get(s, np.nan))} |" for s in steps)
        row += f" {_fmt_s(r['total_s'])} | {r['rss_start_mib']:.0f} |"
        row += "".join(f" {r['step_peak_rss_mib'].get(s, np.nan):.0f} |" for s in steps)
        row += f" {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / r['csr_mib']:.1f} |"
        lines.append(row)
    text = "\n".join(lines)
    fitted = slopes(results)
    if fitted:
        parts = [f"{name} {slope:.2f} ({n} sizes)" for name, (slope, n) in fitted.items()]
        text += "\n\nlog-log slope of seconds vs non-zeros (2,000-gene sizes): " + ", ".join(parts)
    gens = [
        f"{label}: {r['generation']['generation_s']:.1f} s, {r['generation']['file_mib']:.0f} MiB"
        f" (median {r['generation']['median_umis']:.0f} UMIs/cell)"
        for label, r in results.items()
        if "generation" in r
    ]
    if gens:
        text += "\n\ngeneration (time when first written, file size): " + "; ".join(gens)
    return text


def machine() -> dict:
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    import h5py
    import scipy

    import scn2s

    commit = "?"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):

        def git(*words: str) -> str:
            done = subprocess.run(["git", *words], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
            return done.stdout.strip()

        commit = git("rev-parse", "--short", "HEAD") + (" (dirty)" if git("status", "--porcelain") else "")
    return {
        "cpus": os.cpu_count(),
        "mem_total": mem.split(":")[1].strip(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "anndata": importlib.metadata.version("anndata"),
        "h5py": h5py.__version__,
        "scn2s": scn2s.__version__,
        "scn2s_path": str(Path(scn2s.__file__).parent),
        "commit": commit,
        "date": datetime.date.today().isoformat(),
    }


def save(out: Path, label: str, entry: dict, info: dict) -> dict:
    """Merge one size's entry into ``out``, keeping the other sizes there."""
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("sizes", {})[label] = entry
    results["machine"] = info
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=",".join(SIZES),
        help=f"comma-separated sizes, cells[xgenes] (genes default 2k); default {','.join(SIZES)}",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per size (the table shows medians)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/OPENBLAS/MKL threads of the workers; 0 inherits")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run (and per generation)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="cache of the simulated .h5ad files")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    parser.add_argument("--depth", type=float, default=1200.0, help="median library size of the simulation")
    parser.add_argument(
        "--max-dense-gib",
        type=float,
        default=6.0,
        help="without denoise(output=...), skip sizes whose dense float32 layer is larger than this",
    )
    parser.add_argument(
        "--installed-scn2s",
        action="store_true",
        help="workers import the installed scn2s (default: the one of this checkout, put first on PYTHONPATH)",
    )
    parser.add_argument("--tables", action="store_true", help="print the table of --out and exit")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--generate-one", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.installed_scn2s or args.run_one or args.generate_one):
        sys.path.insert(0, str(REPO_ROOT))
    if args.run_one:
        run_one(args)
        return 0
    if args.generate_one:
        generate_one(args)
        return 0
    if args.tables:
        print(table(json.loads(args.out.read_text())["sizes"]))
        return 0
    sizes = [parse_size(s.strip()) for s in args.sizes.split(",") if s.strip()]
    info = machine()
    factors = has_output_parameter()
    results: dict = {}
    for label, n_cells, n_genes in sizes:
        entry: dict = {"n_cells": n_cells, "n_genes": n_genes}
        if not factors and dense_layer_gib(n_cells, n_genes) > args.max_dense_gib:
            entry["skipped"] = (
                f"skipped: denoise has no output= parameter and the dense layer would take "
                f"{dense_layer_gib(n_cells, n_genes):.1f} GiB (> --max-dense-gib {args.max_dense_gib:g})"
            )
            log(f"[{label}] {entry['skipped']}")
        else:
            params = SimParams(n_cells, n_genes, depth=args.depth, seed=args.seed)
            try:
                path, stats = ensure_data(params, args.data_dir, args)
            except (subprocess.TimeoutExpired, RuntimeError) as error:
                entry["error"] = f"generation: {error}"
                log(f"[{label}] {entry['error']}")
            else:
                runs = []
                for i in range(args.repeats):
                    runs.append(spawn_run(path, args, label))
                    if "total_s" in runs[-1]:
                        r = runs[-1]
                        log(
                            f"[{label}] run {i + 1}/{args.repeats}: {r['total_s']:.1f} s, peak RSS "
                            f"{r['peak_rss_mib']:.0f} MiB, CSR {r['csr_mib']:.0f} MiB, steps {r['step_seconds']}"
                        )
                entry |= median_result(runs) | {"runs": runs, "generation": stats, "params": asdict(params)}
        entry |= {"threads": args.threads, "repeats": args.repeats, "output_factors": factors}
        results = save(args.out, label, entry, info)["sizes"]
    print(table({label: results[label] for label, _, _ in sizes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
