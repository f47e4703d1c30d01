"""Inference from the compressed form: sparse / codebook layers vs dense torch, shrunk LeNets, loading memory, decode.

Rerun (LeNet files from `deepzip compress`, see the results' notes):

    XDG_CACHE_HOME=runs/cache OMP_NUM_THREADS=1 python benchmarks/inference.py \
        --lenet300 runs/lenet300.dz --lenet5 runs/lenet5.dz

Sections (torch with 1 thread throughout; each timing is the median of repeats, the variants of one row timed in
interleaved rounds in the same run, so that a change of machine load hits them alike):

1. Fully-connected layers at AlexNet's fc6 / fc7 / fc8 shapes at Deep Compression's kept fractions (9% / 9% / 25%)
   and at LeNet-300-100's (from the .dz file), 5-bit shared weights: dense ``F.linear`` vs deepzip's runtime layers,
   each weight form (``csr``: float32 values; ``codebook``: indices) on each kernel (``torch_*``: torch's sparse CSR;
   ``c_*``: deepzip's C kernel, 8-bit relative columns, as shipped (portable -O3); ``c_codebook_native``: the same
   source built with -march=native, to see what the portable flags cost), batch 1 and 64. Each timed call follows an
   untimed call of the same layer (a layer called repeatedly); plus the fc6 -> fc7 -> fc8 stack run as one network
   (each layer's weights partly evicted from the cache by the others, as in a real forward pass).
2. Whole LeNet-300-100 and LeNet-5 from their .dz files: original (dense), shrunk dense (:func:`deepzip.shrink_`),
   compressed runtime (``load(runtime="fast")`` and ``"small"``): latency at batch 1 / 64, tensor bytes, resident-set
   growth of a fresh process that loads the file, and the MNIST test error of each (all equal to the file's).
3. Peak memory (``VmHWM``: the process's own ``ru_maxrss``) of a fresh process that loads a 100M-weight .dz file
   into dense tensors vs into the compressed runtime.
4. Decoding a 10M-weight .dz file vs ``xz -d`` of the same weights as a float32 checkpoint (``torch.save`` +
   ``xz -9e``), wall and CPU seconds.

Results: benchmarks/results/inference.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_results
from codec import make_layer

import deepzip
from deepzip import codec
from deepzip.runtime import SparseLinear, _SparseWeight, _spkernel, kernels_available, layer_bytes, runtime_table
from deepzip.techniques.prune import strip
from deepzip.techniques.shrink import shrink_

torch.set_num_threads(1)
ALEXNET = [("fc6", 4096, 9216, 0.09), ("fc7", 4096, 4096, 0.09), ("fc8", 1000, 4096, 0.25)]
LENET300_SHAPES = [("fc1", 300, 784), ("fc2", 100, 300), ("fc3", 10, 100)]


def interleaved(fns: dict[str, callable], repeats: int, warm: bool = False,
                cpu: dict[str, float] | None = None) -> dict[str, float]:
    """Median milliseconds of each function, timed in interleaved rounds (one call of each per round).

    ``cpu``: if given, filled with the median milliseconds of CPU time of this thread per call (``time.thread_time``:
    what the call cost when it ran, without the time other processes held the core; on a shared machine the wall
    time's median includes those waits).

    ``warm``: each timed call comes right after an untimed call of the same function, so it finds the caches as a
    layer called repeatedly does (the other functions of the round have evicted them otherwise); the order within a
    round is then shuffled (seeded), since a call that follows a dense layer's 150 MB sweep measured up to ~10% slower
    even after its warm-up call.
    """
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu_times: dict[str, list[float]] = {k: [] for k in fns}
    rng = random.Random(0)
    for _ in range(repeats):
        order = list(fns)
        if warm:
            rng.shuffle(order)
        for k in order:
            f = fns[k]
            if warm:
                f()
            c0, t0 = time.thread_time(), time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
            cpu_times[k].append(time.thread_time() - c0)
    if cpu is not None:
        cpu.update({k: 1e3 * statistics.median(v) for k, v in cpu_times.items()})
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def shared_pruned(rows: int, cols: int, keep: float, seed: int, bits: int = 5) -> torch.Tensor:
    """A (rows, cols) weight like a pruned, weight-shared layer: Laplace weights, the smallest pruned away, the rest
    on 2**bits linearly spaced centroids (benchmarks/codec.py's synthetic layer)."""
    cb, idx, mask = make_layer(rows * cols, seed=seed, prune=1.0 - keep, k=2**bits)
    return torch.from_numpy(np.where(mask, cb[idx], np.float32(0)).reshape(rows, cols))


# The runtime's sparse variants: (kind, kernel). The C kernel's only when it is built (see deepzip/_spkernel.py).
VARIANTS = {"torch_csr": ("csr", "torch-csr"), "torch_codebook": ("codebook", "torch-csr"),
            "c_csr": ("csr", "deepzip-c"), "c_codebook": ("codebook", "deepzip-c")}


def native_kernel(tmp: Path):
    """The same C source built with ``-O3 -march=native`` (the shipped build is portable ``-O3``), or None."""
    import ctypes

    src = Path(deepzip.__file__).parent / "_spmv.c"
    lib = tmp / "spmv_native.so"
    if shutil.which("gcc") is None or subprocess.run(
            ["gcc", "-O3", "-march=native", "-std=c99", "-shared", "-fPIC", "-o", str(lib), str(src)]).returncode:
        return None
    return ctypes.CDLL(str(lib))


def native_call(lib, layer: SparseLinear, x: torch.Tensor):
    """``layer(x)`` (no bias) through the natively built library, on the arrays the shipped kernel has checked."""
    import ctypes

    from deepzip.runtime import _spkernel

    sw = layer.sparse
    rowptr, step, vals, cb = sw._c_arrays()
    fn = getattr(lib, _spkernel.VALUE_DTYPES[vals.dtype])
    P, I64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes, fn.restype = [I64, P, P, P, P, P, P, I64], None
    rows, batch = sw.shape[0], x.shape[0]
    cbp = None if cb is None else cb.ctypes.data

    def run() -> torch.Tensor:
        xt = x.t().contiguous()
        y = torch.empty(rows, batch)
        fn(rows, rowptr.ctypes.data, step.ctypes.data, vals.ctypes.data, cbp, xt.data_ptr(), y.data_ptr(), batch)
        return y.t()

    return run


def fc_layers(lenet300_kept: dict[str, float], repeats: int, tmp: Path) -> list[dict]:
    rows = []
    specs = [(n, o, i, k, "AlexNet") for n, o, i, k in ALEXNET]
    specs += [(n, o, i, lenet300_kept[n], "LeNet-300-100") for n, o, i in LENET300_SHAPES]
    layers = {}
    built = kernels_available()
    names = [k for k, (_, kernel) in VARIANTS.items() if kernel in built]
    native = native_kernel(tmp) if "deepzip-c" in built else None
    for seed, (name, out_f, in_f, keep, net) in enumerate(specs):
        w = shared_pruned(out_f, in_f, keep, seed)
        variants = {k: SparseLinear(_SparseWeight.from_dense(w, *VARIANTS[k][:1], kernel=VARIANTS[k][1]), None)
                    for k in names}
        layers[(net, name)] = (w, variants)
        for batch in (1, 64):
            x = torch.rand(batch, in_f)
            reps = repeats if out_f * in_f * batch < 50e6 else max(5, repeats // 4)
            fns = {"dense": lambda w=w, x=x: F.linear(x, w),
                   **{k: (lambda m=m, x=x: m(x)) for k, m in variants.items()}}
            if native is not None and net == "AlexNet":
                fns["c_codebook_native"] = native_call(native, variants["c_codebook"], x)
                assert torch.allclose(fns["c_codebook_native"](), variants["c_codebook"](x), atol=1e-4)
            cpu: dict[str, float] = {}
            with torch.no_grad():
                ms = interleaved(fns, reps, warm=True, cpu=cpu)
            kept_pct = 100 * float((w != 0).float().mean())
            row = {"net": net, "layer": name, "shape": f"{out_f}x{in_f}", "kept_pct": kept_pct, "batch": batch,
                   "dense_ms": ms["dense"]}
            row |= {f"{k}_ms": ms[k] for k in fns if k != "dense"}
            row |= {f"speedup_{k}": ms["dense"] / ms[k] for k in fns if k != "dense"}
            row |= {f"{k}_cpu_ms": cpu[k] for k in fns}
            row |= {f"cpu_speedup_{k}": cpu["dense"] / cpu[k] for k in fns if k != "dense"}
            best = min(names, key=lambda k: ms[k])
            row |= {"best": best if ms[best] < ms["dense"] else "dense", "speedup_best": ms["dense"] / ms[best],
                    "dense_bytes": 4 * w.numel(), **{f"{k}_bytes": layer_bytes(m) for k, m in variants.items()},
                    "repeats": reps}
            rows.append(row)
            print(f"{net} {name} batch {batch}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()), flush=True)
    # the AlexNet FC stack as one network: each layer's weights have been pushed out of the cache by the others
    ws = [layers[("AlexNet", n)] for n, *_ in ALEXNET]
    for batch in (1, 64):
        x = torch.rand(batch, 9216)

        def stack(kind: str, x: torch.Tensor = x) -> torch.Tensor:
            h = x
            for w, var in ws:
                h = F.relu(F.linear(h, w) if kind == "dense" else var[kind](h))
            return h

        cpu = {}
        with torch.no_grad():
            ms = interleaved({k: (lambda k=k: stack(k)) for k in ("dense", *names)},
                             repeats if batch == 1 else max(5, repeats // 4), warm=True, cpu=cpu)
        best = min(names, key=lambda k: ms[k])
        rows.append({"net": "AlexNet", "layer": "fc6+fc7+fc8 stack", "shape": "", "kept_pct": None, "batch": batch,
                     "dense_ms": ms["dense"], **{f"{k}_ms": ms[k] for k in names},
                     **{f"speedup_{k}": ms["dense"] / ms[k] for k in names},
                     **{f"{k}_cpu_ms": cpu[k] for k in ("dense", *names)},
                     **{f"cpu_speedup_{k}": cpu["dense"] / cpu[k] for k in names},
                     "best": best, "speedup_best": ms["dense"] / ms[best],
                     "dense_bytes": sum(4 * w.numel() for w, _ in ws),
                     **{f"{k}_bytes": sum(layer_bytes(v[k]) for _, v in ws) for k in names}})
        print(f"stack batch {batch}: {ms}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------- whole LeNets
_RSS_CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
import deepzip, deepzip.runtime, deepzip.techniques.shrink, deepzip.techniques.share, torch.fx
from deepzip.cli.bench import rss_bytes
from deepzip.techniques.prune import strip
from deepzip.runtime import SparseLinear, _SparseWeight
w = torch.zeros(8, 8); w[0, 0] = 1
SparseLinear(_SparseWeight.from_dense(w, "codebook"), None)(torch.rand(2, 8))
torch.nn.functional.conv2d(torch.rand(1, 1, 8, 8), torch.rand(2, 1, 3, 3))
path, variant = sys.argv[1], sys.argv[2]
before = rss_bytes()
m = deepzip.load(path, runtime={"original": None}.get(variant, variant))
if variant == "original":
    strip(m)
print(json.dumps({"rss_growth": rss_bytes() - before}))
"""


def child_json(code: str, *argv: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def lenet(path: Path, repeats: int) -> tuple[list[dict], list[dict], dict]:
    from deepzip.apps.mnist.data import load_mnist
    from deepzip.train import evaluate

    test = load_mnist("test", quiet=True)
    original = strip(deepzip.load(path)).eval()
    log: list[dict] = []
    shrunk = shrink_(strip(deepzip.load(path)), report=log)
    models = {"original (dense)": original, "shrunk dense": shrunk,
              "runtime fast": deepzip.load(path, runtime="fast"), "runtime small": deepzip.load(path, runtime="small")}
    variant_arg = {"original (dense)": "original", "shrunk dense": "shrunk", "runtime fast": "fast",
                   "runtime small": "small"}
    rows = []
    lat: dict[int, dict[str, float]] = {}
    with torch.no_grad():
        for batch in (1, 64):
            x = test.x[:batch].clone()
            lat[batch] = interleaved({k: (lambda m=m, x=x: m(x)) for k, m in models.items()}, repeats)
    for k, m in models.items():
        err = evaluate(m, test)
        rss = child_json(_RSS_CHILD, str(path), variant_arg[k])["rss_growth"]
        rows.append({"model": path.stem, "variant": k, "test_error_pct": err.error_pct, "errors": err.errors,
                     "batch1_ms": lat[1][k], "batch64_ms": lat[64][k],
                     "speedup_b1": lat[1]["original (dense)"] / lat[1][k],
                     "speedup_b64": lat[64]["original (dense)"] / lat[64][k],
                     "tensor_bytes": layer_bytes(m), "rss_growth_bytes": rss,
                     "layers": ", ".join(f"{r['layer']} {r['form']}"
                                         + (f" ({r['kernel']})" if r["form"] != "dense" else "")
                                         for r in runtime_table(m))})
        print(rows[-1], flush=True)
    extra = {}
    first = original.fc1 if hasattr(original, "fc1") else None
    if first is not None and first.weight.shape[1] == 784:
        used = (first.weight != 0).any(0).reshape(28, 28).numpy()
        frame = np.ones((28, 28), bool)
        frame[3:-3, 3:-3] = False
        extra = {"inputs_read": int(used.sum()), "inputs_dropped": int((~used).sum()),
                 "dropped_in_outer_3px_frame": int((~used & frame).sum()), "outer_3px_frame": int(frame.sum()),
                 "picture": "\n".join("".join("#" if u else "." for u in row) for row in used)}
    return rows, log, extra


# ------------------------------------------------------------------------------------------------- 100M peak
_PEAK_CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
from torch import nn
import deepzip.runtime, deepzip.io.serialize
from deepzip.runtime import SparseLinear, _SparseWeight
w = torch.zeros(8, 8); w[0, 0] = 1
SparseLinear(_SparseWeight.from_dense(w, "codebook"), None)(torch.rand(2, 8))
path, how, nlayers, rows, cols = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])


def hwm_kib():
    # VmHWM: this process's peak resident set since its exec. ru_maxrss would do, but Linux carries the forking
    # parent's peak over into it, and the parent here is a benchmark holding hundreds of MB.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


base = hwm_kib()
if how == "dense":
    sd = deepzip.io.serialize.load_state_dict(path)
    held = sum(t.numel() * t.element_size() for t in sd.values())
else:
    with torch.device("meta"):
        model = nn.Sequential(*[nn.Linear(cols, rows, bias=False) for _ in range(nlayers)])
    model = deepzip.io.serialize.load(path, model=model, runtime=how)
    held = deepzip.runtime.layer_bytes(model)
peak = hwm_kib()
print(json.dumps({"base_kib": base, "peak_kib": peak, "held_bytes": held}))
"""


def peak_memory(tmp: Path, total: int) -> list[dict]:
    layer_rows, layer_cols = 2500, 4000  # 10M weights per layer, as in benchmarks/codec.py
    n = total // (layer_rows * layer_cols)
    tensors = {}
    for i in range(n):
        cb, idx, mask = make_layer(layer_rows * layer_cols, seed=i)
        tensors[f"{i}.weight"] = codec.encode_sparse(cb, idx.reshape(layer_rows, layer_cols),
                                                     mask.reshape(layer_rows, layer_cols))
    path = tmp / "synthetic100M.dz"
    size = codec.write(path, tensors, architecture=None)
    del tensors
    rows = []
    for how in ("dense", "small", "fast"):
        r = child_json(_PEAK_CHILD, str(path), how, str(n), str(layer_rows), str(layer_cols))
        rows.append({"load_into": {"dense": "dense tensors (load_state_dict)", "small": "runtime small (codebook)",
                                   "fast": "runtime fast (timed per layer)"}[how],
                     "weights": n * layer_rows * layer_cols, "file_bytes": size,
                     "peak_rss_mib": r["peak_kib"] / 1024, "base_rss_mib": r["base_kib"] / 1024,
                     "peak_minus_base_mib": (r["peak_kib"] - r["base_kib"]) / 1024,
                     "held_tensor_mib": r["held_bytes"] / 2**20})
        print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------------------------- decode vs xz
def decode_vs_xz(tmp: Path, total: int, repeats: int) -> dict:
    cb, idx, mask = make_layer(total, seed=0)
    path = tmp / "synthetic10M.dz"
    codec.write(path, {"layer0.weight": codec.encode_sparse(cb, idx, mask)})
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        f = codec.read(path)
        for name in f.tensors:
            f.decode(name)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    pt = tmp / "dense.pt"
    torch.save({"layer0.weight": torch.from_numpy(np.where(mask, cb[idx], np.float32(0)))}, pt)
    xz = tmp / "dense.pt.xz"
    t0 = time.perf_counter()
    with open(pt, "rb") as src, open(xz, "wb") as dst:
        subprocess.run(["xz", "-9e", "-T1", "-c"], stdin=src, stdout=dst, check=True)
    xz_compress_s = time.perf_counter() - t0
    xwall, xcpu = [], []
    for _ in range(repeats):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with open(xz, "rb") as src:
            subprocess.run(["xz", "-d", "-c"], stdin=src, stdout=subprocess.DEVNULL, check=True)
        xwall.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        xcpu.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    return {"weights": total, "dz_bytes": path.stat().st_size, "xz_bytes": xz.stat().st_size,
            "dz_read_decode_wall_s": statistics.median(wall), "dz_read_decode_cpu_s": statistics.median(cpu),
            "xz_d_wall_s": statistics.median(xwall), "xz_d_cpu_s": statistics.median(xcpu),
            "xz_9e_compress_s": xz_compress_s, "repeats": repeats,
            "wall_ratio_xz_over_dz": statistics.median(xwall) / statistics.median(wall),
            "cpu_ratio_xz_over_dz": statistics.median(xcpu) / statistics.median(cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lenet300", type=Path, default=Path("runs/lenet300.dz"))
    ap.add_argument("--lenet5", type=Path, default=Path("runs/lenet5.dz"))
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--peak-size", type=int, default=100_000_000)
    ap.add_argument("--decode-size", type=int, default=10_000_000)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: fc,lenet,peak,decode")
    ap.add_argument("--tag", default="", help="suffix of the results name (a rerun beside the main one)")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    load = {"start": os.getloadavg()}
    out: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="dzinfer"))
    try:
        kept = {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}  # the paper's, unless the file says otherwise
        if a.lenet300.is_file():
            f = codec.read(a.lenet300)
            kept = {n: s["kept"] / s["count"] for s in f.stats(entropy=False)
                    for n in [s["name"].split(".")[0]] if s["name"].endswith(".weight")}
        if "fc" not in skip:
            out["fc"] = fc_layers(kept, a.repeats, tmp)
            load["after_fc"] = os.getloadavg()
        if "lenet" not in skip:
            out["lenet"], out["shrink"], out["pixels"] = [], [], {}
            for p in (a.lenet300, a.lenet5):
                if not p.is_file():
                    print(f"skipping {p}: no such file (make it with `deepzip compress`)", flush=True)
                    continue
                r, log, extra = lenet(p, a.repeats)
                out["lenet"] += r
                out["shrink"] += [{"model": p.stem, **row} for row in log]
                if extra:
                    out["pixels"][p.stem] = extra
            load["after_lenet"] = os.getloadavg()
        if "peak" not in skip:
            out["peak"] = peak_memory(tmp, a.peak_size)
            load["after_peak"] = os.getloadavg()
        if "decode" not in skip:
            out["decode"] = decode_vs_xz(tmp, a.decode_size, 5)
            print(out["decode"], flush=True)
            load["after_decode"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    command = "XDG_CACHE_HOME=runs/cache OMP_NUM_THREADS=1 python benchmarks/inference.py " + " ".join(sys.argv[1:])
    sections = {}
    loads = json.dumps({k: [round(x, 2) for x in v] for k, v in load.items()})
    note = (f"torch {torch.__version__} with 1 thread (torch.set_num_threads(1)); {os.cpu_count()} CPU cores shared "
            f"with other jobs; load average (1, 5, 15 min) {loads}. "
            "Each time is the median of repeats; the variants of a row were timed in interleaved rounds (in the FC "
            "section each timed call right after an untimed call of the same variant, the order shuffled per round). "
            "`speedup_*` are ratios of wall-time medians; `cpu_speedup_*` of the calling thread's CPU-time medians "
            "(time.thread_time), which leave out the time other processes held the core. Sparse kernels here: "
            f"{', '.join(kernels_available())} (C kernel code path: {_spkernel.isa() or 'not built'}).")
    sections["Machine and method"] = note + "\n"
    if out.get("lenet"):
        sections["Whole LeNets from their .dz files"] = md_table(out["lenet"], [
            "model", "variant", "test_error_pct", "errors", "batch1_ms", "batch64_ms", "speedup_b1", "speedup_b64",
            "tensor_bytes", "rss_growth_bytes", "layers"]) + (
            "\n`rss_growth_bytes`: growth of the resident set when a fresh process (modules imported, kernels warmed "
            "up) loads the file; for models this small it is mostly allocator and library noise, `tensor_bytes` is "
            "what the model holds.\n")
    if out.get("shrink"):
        rows = [{k: r.get(k) for k in ("model", "layer", "what", "before", "after", "unused", "constant_folded",
                                       "into", "note")} for r in out["shrink"]]
        body = md_table(rows)
        for m, e in out.get("pixels", {}).items():
            body += (f"\n{m}: fc1 reads {e['inputs_read']} of 784 pixels; {e['inputs_dropped']} dropped, "
                     f"{e['dropped_in_outer_3px_frame']} of them in the outer 3-pixel frame "
                     f"({e['outer_3px_frame']} pixels). Pixels read (#) and dropped (.):\n\n```\n{e['picture']}\n```\n")
        sections["What shrink_ removes"] = body
    if out.get("peak"):
        sections["Peak memory of loading a 100M-weight .dz file (fresh process, peak resident set)"] = md_table(
            out["peak"]) + ("\nPeak = VmHWM of the loading process (its own ru_maxrss: Linux carries a forking "
                            "parent's peak over into ru_maxrss, so it is read from /proc/self/status); base = the same "
                            "after imports, before the load.\n")
    if out.get("decode"):
        d = out["decode"]
        sections["Decoding vs xz -d"] = (
            f"{d['weights']:,}-weight pruned + 5-bit shared layer: .dz ({d['dz_bytes']:,} B) read + decode "
            f"{d['dz_read_decode_wall_s']:.3f} s wall / {d['dz_read_decode_cpu_s']:.3f} s CPU; `xz -d` of the "
            f"float32 `torch.save` checkpoint compressed with `xz -9e` ({d['xz_bytes']:,} B) {d['xz_d_wall_s']:.3f} s "
            f"wall / {d['xz_d_cpu_s']:.3f} s CPU (decompression only, no torch.load). xz / dz: "
            f"{d['wall_ratio_xz_over_dz']:.2f}x wall, {d['cpu_ratio_xz_over_dz']:.2f}x CPU. "
            f"Medians of {d['repeats']}.\n")
    write_results("inference" + a.tag, out.get("fc", []), command, title="Inference from the compressed form",
                  sections=sections, extra={k: v for k, v in out.items() if k != "fc"} | {"load": load},
                  columns=["net", "layer", "shape", "kept_pct", "batch", "dense_ms", "torch_csr_ms",
                           "torch_codebook_ms", "c_csr_ms", "c_codebook_ms", "c_codebook_native_ms",
                           "speedup_torch_csr", "speedup_torch_codebook", "speedup_c_csr", "speedup_c_codebook",
                           "speedup_c_codebook_native", "cpu_speedup_torch_csr", "cpu_speedup_c_csr",
                           "cpu_speedup_c_codebook", "best", "dense_bytes", "torch_csr_bytes",
                           "torch_codebook_bytes", "c_csr_bytes", "c_codebook_bytes"])


if __name__ == "__main__":
    main()
