"""How fast is deepzip's exact 1-D k-means at 1M .. 1B weights, and against generic k-means?

Data: pruned-looking weights. Laplace(0, b) weights kept where |w| > t are exactly sign * (t + Exp(b))
(the exponential is memoryless), so we draw that directly, in chunks, into one preallocated float32
array: no float64 copy of a billion weights.

Rows: deepzip ``kmeans1d`` (linear init, run to its exact fixed point; time split into
sort / iterate / assign), deepzip ``linear_quantize`` (uniform levels, the fixed-point baseline), and at
the small sizes two generic k-means baselines from the *same* linear init: ``scipy.cluster.vq.kmeans2``
and a naive numpy Lloyd (n x k distance matrix, chunked). Generic k-means costs O(n k) per step, so the
baselines run a fixed, small number of steps; we report their measured seconds per step and the time
they would need for the number of steps deepzip ran ("extrapolated"), which is what the speed-up uses.

    python benchmarks/kmeans_scale.py                 # 1e6,1e7,1e8,1e9 (1B needs ~10 GB free RAM)
    python benchmarks/kmeans_scale.py --quick         # 1e5,1e6 in a few seconds
    python benchmarks/kmeans_scale.py --sizes 1e6,1e7
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from deepzip.techniques._kmeans import _kmeans1d, init_centroids, linear_quantize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BITS = 5
K = 1 << BITS
CHUNK = 1 << 24


def pruned_laplace(n: int, seed: int = 0, b: float = 0.02, t: float = 0.02) -> np.ndarray:
    """n float32 weights distributed like Laplace(0, b) conditioned on |w| > t; shape (n,)."""
    rng = np.random.default_rng(seed)
    w = np.empty(n, dtype=np.float32)
    for a in range(0, n, CHUNK):
        c = w[a : a + CHUNK]
        rng.standard_exponential(out=c, dtype=np.float32)
        c *= np.float32(b)
        c += np.float32(t)
        m = c.shape[0]
        neg = np.unpackbits(rng.integers(0, 256, size=(m + 7) // 8, dtype=np.uint8))[:m].view(
            bool
        )  # fair signs
        np.negative(c, out=c, where=neg)
    return w


def sqnr_db(x: np.ndarray, c: np.ndarray, lab: np.ndarray) -> float:
    """10 log10(sum x^2 / sum (x - c[lab])^2), chunked."""
    sig = err = 0.0
    c32 = c.astype(np.float64)
    for a in range(0, x.shape[0], CHUNK):
        xc = x[a : a + CHUNK].astype(np.float64)
        sig += float(np.dot(xc, xc))
        d = xc - c32[lab[a : a + CHUNK]]
        err += float(np.dot(d, d))
    return float(10 * np.log10(sig / err)) if err > 0 else float("inf")


def naive_lloyd(x: np.ndarray, c0: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Textbook Lloyd: n x k distances (in chunks of 1M rows to bound memory), argmin, means."""
    c = c0.astype(np.float64).copy()
    lab = np.empty(x.shape[0], dtype=np.int64)
    for _ in range(iters):
        for a in range(0, x.shape[0], 1 << 20):
            xc = x[a : a + (1 << 20), None].astype(np.float64)  # (m, 1)
            lab[a : a + (1 << 20)] = np.argmin(np.abs(xc - c[None, :]), axis=1)  # (m, k) -> (m,)
        cnt = np.bincount(lab, minlength=c.size)
        s = np.bincount(lab, weights=x, minlength=c.size)
        nz = cnt > 0
        c[nz] = s[nz] / cnt[nz]  # empty clusters keep their centroid
    return c, lab


def row(n: int, variant: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "model": "synthetic",
        "variant": variant,
        "params_total": n,
        "params_nonzero": n,
        "bytes": None,
        "ratio": None,
        "test_error_pct": None,
        "seconds": round(seconds, 4),
        "weights_per_s": round(n / seconds) if seconds > 0 else None,
        **extra,
    }


def bench_size(n: int, baselines: bool, base_iters: int, budget_s: float) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    x = pruned_laplace(n)
    gen_s = time.perf_counter() - t0
    print(f"n={n:,}: generated in {gen_s:.1f}s", flush=True)
    rows = []

    t0 = time.perf_counter()
    c, lab, info = _kmeans1d(x, K, "linear", 10_000, 0.0, 0, False)
    dz_s = time.perf_counter() - t0
    dz = row(
        n,
        f"deepzip kmeans1d {BITS}-bit",
        dz_s,
        k=K,
        clusters=int(c.size),
        iterations=info["iterations"],
        converged=info["converged"],
        sort_s=round(info["sort_s"], 4),
        iterate_s=round(info["iterate_s"], 4),
        assign_s=round(info["assign_s"], 4),
        sqnr_db=round(sqnr_db(x, c, lab), 3),
        peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    )
    rows.append(dz)
    print(f"  kmeans1d: {dz_s:.2f}s ({info})", flush=True)
    del lab
    gc.collect()

    t0 = time.perf_counter()
    lv, llab = linear_quantize(x, BITS)
    lq_s = time.perf_counter() - t0
    rows.append(
        row(n, f"deepzip linear_quantize {BITS}-bit", lq_s, k=K, sqnr_db=round(sqnr_db(x, lv, llab), 3))
    )
    print(f"  linear_quantize: {lq_s:.2f}s", flush=True)
    del llab
    gc.collect()

    if baselines:
        c0 = init_centroids(x, K, "linear")
        for name, fn in (("scipy kmeans2", _scipy_kmeans2), ("naive numpy Lloyd", naive_lloyd)):
            # estimate from one step whether base_iters steps fit the budget
            t0 = time.perf_counter()
            fn(x, c0, 1)
            one = time.perf_counter() - t0
            if one * base_iters > budget_s:
                rows.append(
                    row(n, name, float("nan"), skipped=f"~{one * base_iters:.0f}s for {base_iters} steps")
                )
                print(f"  {name}: skipped (one step {one:.1f}s)", flush=True)
                continue
            t0 = time.perf_counter()
            bc, blab = fn(x, c0, base_iters)
            b_s = time.perf_counter() - t0
            per = b_s / base_iters
            extra = per * info["iterations"]
            rows.append(
                row(
                    n,
                    name,
                    b_s,
                    k=K,
                    iterations=base_iters,
                    seconds_per_iter=round(per, 4),
                    seconds_extrapolated_to_deepzip_iters=round(extra, 1),
                    sqnr_db=round(sqnr_db(x, bc, blab), 3),
                )
            )
            key = "scipy_kmeans2" if name.startswith("scipy") else "naive_numpy"
            dz[f"speedup_vs_{key}"] = round(extra / dz_s, 1)
            dz[f"speedup_vs_{key}_{base_iters}_steps_only"] = round(b_s / dz_s, 2)
            print(f"  {name}: {b_s:.2f}s for {base_iters} steps ({per:.3f}s/step)", flush=True)
            del blab
            gc.collect()
    del x
    gc.collect()
    return rows


def _scipy_kmeans2(x: np.ndarray, c0: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    import warnings

    from scipy.cluster.vq import kmeans2

    warnings.filterwarnings("ignore", "One of the clusters is empty", UserWarning)

    # kmeans2 needs float64 2-D data; the conversion counts against it (it is part of using it)
    c, lab = kmeans2(x.astype(np.float64)[:, None], c0[:, None].copy(), iter=iters, minit="matrix")
    return c[:, 0], lab


def commit() -> str:
    try:
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--", "src/deepzip/techniques/_kmeans.py",
            __file__],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if dirty:
            return "uncommitted"
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"


def markdown(res: dict[str, Any]) -> str:
    cols = [
        ("params_total", "weights"),
        ("variant", "variant"),
        ("seconds", "seconds"),
        ("weights_per_s", "weights/s"),
        ("iterations", "iters"),
        ("sort_s", "sort s"),
        ("iterate_s", "iterate s"),
        ("assign_s", "assign s"),
        ("seconds_per_iter", "s/iter"),
        ("seconds_extrapolated_to_deepzip_iters", "s at deepzip iters"),
        ("sqnr_db", "SQNR dB"),
        ("peak_rss_gb", "peak RSS GB"),
    ]
    lines = [
        f"# kmeans_scale: exact 1-D k-means, {BITS}-bit (k={K}), linear init",
        "",
        (
            f"`{res['command']}` at commit `{res['commit']}`; {res['machine']}; "
            f"load average before/after: {res['loadavg_before']} / {res['loadavg_after']}."
        ),
        "",
        "| " + " | ".join(h for _, h in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in res["rows"]:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            if key == "params_total":
                v = f"{v:.0e}".replace("e+0", "e")
            elif v is None:
                v = ""
            elif key == "weights_per_s":
                v = f"{v / 1e6:.1f}M"
            elif key == "seconds" and "skipped" in r:
                v = f"skipped ({r['skipped']})"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Speed-ups of deepzip kmeans1d (baseline seconds extrapolated to deepzip's iteration count):",
        "",
    ]
    for r in res["rows"]:
        sp = {k: v for k, v in r.items() if k.startswith("speedup")}
        if sp:
            lines.append(
                f"- n={r['params_total']:.0e}: ".replace("e+0", "e")
                + ", ".join(f"{k}={v}x" for k, v in sp.items())
            )
    lines += ["", res["notes"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6,1e7,1e8,1e9", help="comma-separated weight counts")
    ap.add_argument("--quick", action="store_true", help="sizes 1e5,1e6 and short baselines")
    ap.add_argument("--baseline-max", type=float, default=1e7, help="largest size with baselines")
    ap.add_argument("--baseline-iters", type=int, default=10, help="steps the generic baselines run")
    ap.add_argument("--baseline-budget", type=float, default=120.0, help="skip a baseline over this (s)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    sizes = [int(float(s)) for s in ("1e5,1e6" if args.quick else args.sizes).split(",")]
    res: dict[str, Any] = {
        "benchmark": "kmeans_scale",
        "commit": commit(),
        "command": "python benchmarks/kmeans_scale.py"
        + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}",
        "loadavg_before": [round(v, 2) for v in os.getloadavg()],
        "rows": [],
    }
    for n in sizes:
        res["rows"] += bench_size(n, n <= args.baseline_max, args.baseline_iters, args.baseline_budget)
    res["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    res["notes"] = (
        "Times are wall seconds on a shared machine (see load averages). deepzip kmeans1d runs Lloyd to its "
        "exact fixed point (same partition twice), includes sorting, the iteration and the label pass; "
        "sqnr_db = 10 log10(sum w^2 / sum (w - c[label])^2). Baselines start from the same linear init but "
        f"run {args.baseline_iters} steps only (a generic step costs O(n k)); their s/iter times deepzip's "
        "iteration count gives the extrapolated time used for the speed-up. Baselines are skipped above "
        f"{args.baseline_max:.0e} weights (a 10-step run there takes minutes and a float64 copy of the data)."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kmeans_scale.json").write_text(
        json.dumps(res, indent=2, allow_nan=False, default=str) + "\n"
    )
    (args.out / "kmeans_scale.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
