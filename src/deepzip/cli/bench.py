"""``deepzip bench FILE.dz``: latency per layer and of the whole model, dense vs the compressed runtime, and memory."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial

from ._common import _load_model, _read_args, args, command, print_table

# Run in a fresh interpreter, so that what a load adds to the resident set is the model and nothing else.
_RSS_CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
import deepzip, deepzip.runtime, deepzip.techniques.shrink, deepzip.techniques.share, torch.fx
from deepzip.cli.bench import rss_bytes
from deepzip.techniques.prune import strip
from deepzip.runtime import SparseLinear, _SparseWeight
import numpy as np
path, runtime = sys.argv[1], sys.argv[2]
# warm up what a load touches (kernels, the allocator), so the growth below is the model's
w = torch.zeros(8, 8); w[0, 0] = 1
SparseLinear(_SparseWeight.from_dense(w, "codebook"), None)(torch.rand(2, 8))
torch.nn.functional.conv2d(torch.rand(1, 1, 8, 8), torch.rand(2, 1, 3, 3))
before = rss_bytes()
m = deepzip.load(path, trainable=True) if runtime == "dense" else deepzip.load(
    path, runtime=None if runtime == "default" else runtime)
if runtime == "dense":
    strip(m)
after = rss_bytes()
print(json.dumps({"rss_before": before, "rss_after": after}))
"""


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``), else its peak (``ru_maxrss``)."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def loaded_rss(path: str, runtime: str) -> int:
    """Bytes the resident set grows by when a fresh process loads ``path`` (``runtime`` "dense" or a runtime)."""
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, path, runtime], capture_output=True, text=True)
    if out.returncode != 0:
        raise ValueError(f"{path}: measuring memory failed: {out.stderr.strip().splitlines()[-1:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return int(r["rss_after"] - r["rss_before"])


def _cfg_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the model: a .dz file, a checkpoint (deepzip's, any safetensors, a torch state_dict "
                                "file) or a Hugging Face folder")
    p.add_argument("--model", default=None, help="architecture to load into (default: the one the file names)")
    p.add_argument("--batch", default="1,64", help="comma-separated batch sizes (default 1,64)")
    p.add_argument("--runtime", default="default", choices=["default", "fast", "small"],
                   help="the compressed runtime's mode: default (what deepzip.load and evaluate give: each pruned "
                        "layer sparse where that measured 20%% faster than dense, else dense), fast (sparse where "
                        "faster at all) or small (the fewest bytes)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (the median counts)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-rss", action="store_true", help="skip the resident-set measurement (two fresh processes)")
    p.add_argument("--json", action="store_true")
    _read_args(p)


@command("bench", "latency per layer and in all, dense vs the compressed runtime, and the loaded model's memory")
@args(_cfg_bench)
def cmd_bench(a: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from ..io.reader import checkpoint_kind
    from ..io.serialize import save
    from ..models import MODELS, load_apps, model_name

    try:
        batches = [int(b) for b in a.batch.split(",")]
    except ValueError:
        raise ValueError(f"--batch {a.batch!r}: expected comma-separated integers, e.g. 1,64") from None
    if not batches or min(batches) < 1 or a.repeats < 1:
        raise ValueError(f"--batch {a.batch!r} / --repeats {a.repeats}: expected positive integers")
    model, _ = _load_model(a.file, a.model, a.trust_code, a.max_bytes, images=False)
    arch = model_name(model)
    load_apps()
    spec = MODELS.get(arch or "")
    if spec is None or spec.example_input is None:
        known = ", ".join(n for n, s in MODELS.items() if s.example_input is not None)
        raise ValueError(f"{a.file}: architecture {arch!r} has no known input shape; bench knows {known}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.file)
        if checkpoint_kind(path) != "dz" or a.model:  # the runtimes load a .dz file: this model, written as one
            path = Path(tmp) / "model.dz"
            save(model, path)
        return _bench(a, str(a.file), path, arch, spec.example_input[1:], batches)


def _bench(a: argparse.Namespace, given: str, path, arch: str | None, shape: tuple[int, ...],
           batches: list[int]) -> int:
    """The measurements of ``deepzip bench`` on the ``.dz`` file ``path`` (``given``: the file the user named)."""
    import torch

    from ..io.serialize import load
    from ..runtime import layer_inputs, median_seconds, runtime_table
    from ..techniques.prune import strip

    torch.set_num_threads(a.threads)
    dense = strip(load(path, trainable=True)).eval()  # the plain dense model: parametrizations baked in
    fast = load(path, runtime=None if a.runtime == "default" else a.runtime, progress=sys.stderr.isatty())
    layers = [r["layer"] for r in runtime_table(fast)]
    rows, total = [], []
    with torch.no_grad():
        for b in batches:
            x = torch.rand(b, *shape)
            ins = layer_inputs(dense, x)
            dmods, fmods = dict(dense.named_modules()), dict(fast.named_modules())
            for name in layers:
                xi = ins[name]
                d = median_seconds(partial(dmods[name], xi), a.repeats)
                f = median_seconds(partial(fmods[name], xi), a.repeats)
                rt = next(r for r in runtime_table(fast) if r["layer"] == name)
                rows.append({"batch": b, "layer": name, "form": f"{type(fmods[name]).__name__}/{rt['form']}",
                             "kernel": rt["kernel"], "dense_ms": 1e3 * d,
                    "runtime_ms": 1e3 * f, "speedup": d / f})
            d = median_seconds(partial(dense, x), a.repeats)
            f = median_seconds(partial(fast, x), a.repeats)
            total.append({"batch": b, "layer": "(model)", "form": "", "dense_ms": 1e3 * d, "runtime_ms": 1e3 * f,
                          "speedup": d / f})
    from ..runtime import layer_bytes

    mem: dict = {"dense_tensor_bytes": layer_bytes(dense), "runtime_tensor_bytes": layer_bytes(fast)}
    if not a.no_rss:
        mem.update(dense_rss_growth=loaded_rss(str(path), "dense"), runtime_rss_growth=loaded_rss(str(path), a.runtime))
    from ..runtime import _spkernel

    kernel = (f"deepzip-c ({_spkernel.isa()})" if _spkernel.available() else
              "torch-csr (deepzip's C kernel is " + ("turned off by DEEPZIP_KERNEL=torch)" if _spkernel.library_path()
                                                     else "not built: reinstall with a C compiler)"))
    out = {"file": given, "architecture": arch, "runtime": a.runtime, "threads": a.threads, "kernel": kernel,
           "repeats": a.repeats, "layers": rows, "model": total, "resident_memory": mem,
           "runtime_layers": runtime_table(fast)}
    if a.json:
        print(json.dumps(out, default=str))
        return 0
    print_table(rows + total, [("batch", "batch", ""), ("layer", "layer", ""), ("form", "runtime form", ""),
                               ("kernel", "kernel", ""),
                               ("dense_ms", "dense ms", ".4f"), ("runtime_ms", "runtime ms", ".4f"),
                               ("speedup", "speed-up", ".2f")])
    print(f"\nmemory of the loaded model's tensors: dense {mem['dense_tensor_bytes']:,} B, {a.runtime} runtime "
          f"{mem['runtime_tensor_bytes']:,} B")
    if not a.no_rss:
        print(f"resident set growth when a fresh process loads the file: dense {mem['dense_rss_growth'] / 2**20:.2f} "
              f"MiB, runtime {mem['runtime_rss_growth'] / 2**20:.2f} MiB")
    print(f"latency: medians of {a.repeats} calls, {a.threads} torch thread(s); sparse kernel: {kernel}")
    return 0
