"""Benchmark of the .dz codec: sizes against general-purpose compressors, code lengths, speed, fuzzing.

    python benchmarks/codec.py                 # .dz at 10M and 100M weights, baselines at 10M
    python benchmarks/codec.py --quick         # 1M weights, small fuzz: a smoke run in seconds
    python benchmarks/codec.py --size 100M --baseline-size 100M   # everything at 100M (xz -9e is slow)
    python benchmarks/codec.py --dz a.dz b.dz  # also analyse existing .dz files, per stream
    python benchmarks/codec.py --shared-decode 100M   # decode speed of a 5-bit shared, ~8%-kept model vs xz/zstd -d

Writes benchmarks/results/codec.json and codec.md (see the README convention in the JSON keys).
The synthetic model is a stack of 10M-weight layers like a pruned, weight-shared fc layer: weights
~ Laplace, the smallest 92% by magnitude pruned, the rest shared by 32 linearly spaced centroids
(5-bit indices, peaked where the weights are dense, as after k-means with linear init).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from deepzip import codec
from deepzip.codec import container
from deepzip.errors import DeepzipFormatError

RESULTS = Path(__file__).parent / "results"
LAYER = 10_000_000


def parse_size(s: str) -> int:
    mult = {"k": 10**3, "m": 10**6, "g": 10**9}.get(s[-1].lower(), 1)
    return int(float(s[:-1] if s[-1].isalpha() else s) * mult)


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "uncommitted"


def make_layer(
    n: int, seed: int, prune: float = 0.92, k: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic pruned + shared layer: ``(codebook (k,), indices (n,), mask (n,))``."""
    rng = np.random.default_rng(seed)
    w = rng.laplace(scale=0.05, size=n).astype(np.float32)
    thr = np.quantile(np.abs(w), prune)
    mask = np.abs(w) > thr
    kept = w[mask]
    cb = np.linspace(kept.min(), kept.max(), k).astype(np.float32)  # linear init, as in Deep Compression
    idx = np.zeros(n, np.int64)
    idx[mask] = np.clip(np.searchsorted((cb[1:] + cb[:-1]) / 2, kept), 0, k - 1)
    return cb, idx, mask


def layers(total: int):
    for i, start in enumerate(range(0, total, LAYER)):
        yield f"layer{i}.weight", make_layer(min(LAYER, total - start), seed=i)


def dense(cb: np.ndarray, idx: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, cb[idx], np.float32(0))


def dz_run(total: int, tmp: Path) -> tuple[dict, dict]:
    """Encode, write, read and decode the synthetic model; returns (row, per-stream stats of layer0)."""
    enc_s = 0.0
    tensors = {}
    nonzero = 0
    for name, (cb, idx, mask) in layers(total):
        t0 = time.perf_counter()
        tensors[name] = codec.encode_sparse(cb, idx, mask)
        enc_s += time.perf_counter() - t0
        nonzero += int(mask.sum())
    path = tmp / f"synthetic{total}.dz"
    t0 = time.perf_counter()
    nbytes = codec.write(path, tensors, config={"prune": 0.92, "bits": 5}, architecture="synthetic")
    write_s = time.perf_counter() - t0
    del tensors
    t0 = time.perf_counter()
    f = codec.read(path)
    for name in f.tensors:
        f.decode(name)
    dec_s = time.perf_counter() - t0
    # bit-exactness of the benchmark model itself (first layer)
    cb, idx, mask = make_layer(min(LAYER, total), seed=0)
    assert np.array_equal(f.decode("layer0.weight"), dense(cb, idx, mask))
    st = f.stats()[0]
    row = {
        "model": f"synthetic-{fmt_n(total)}",
        "variant": "dz (prune 92% + 5-bit share + huffman)",
        "params_total": total,
        "params_nonzero": nonzero,
        "bytes": nbytes,
        "ratio": 4 * total / nbytes,
        "test_error_pct": None,
        "seconds": enc_s + write_s,
        "encode_seconds": enc_s,
        "write_seconds": write_s,
        "read_decode_seconds": dec_s,
        "encode_weights_per_s": total / enc_s,
        "decode_weights_per_s": total / dec_s,
    }
    return row, st


def fmt_n(n: int) -> str:
    return f"{n // 10**6}M" if n % 10**6 == 0 else str(n)


def baselines(total: int, tmp: Path, tools: list[str]) -> tuple[list[dict], dict]:
    """torch.save of the dense float32 weights, then gzip -9 / xz -9e / zstd -19 (CLI tools, one thread)."""
    import torch

    state = {name: torch.from_numpy(dense(*parts)) for name, parts in layers(total)}
    nonzero = sum(int((v != 0).sum()) for v in state.values())
    pt = tmp / "dense.pt"
    torch.save(state, pt)
    del state
    raw = pt.stat().st_size
    rows = [
        {
            "model": f"synthetic-{fmt_n(total)}",
            "variant": "torch.save float32",
            "params_total": total,
            "params_nonzero": nonzero,
            "bytes": raw,
            "ratio": 4 * total / raw,
            "test_error_pct": None,
            "seconds": 0.0,
        }
    ]
    cmds = {
        "gzip": (["gzip", "-9", "-c"], ["gzip", "-d", "-c"]),
        "xz": (["xz", "-9e", "-T1", "-c"], ["xz", "-d", "-c"]),
        "zstd": (["zstd", "-19", "-T1", "-c", "-q"], ["zstd", "-d", "-c", "-q"]),
    }
    timing = {}
    for tool in tools:
        comp, decomp = cmds[tool]
        out = tmp / f"dense.pt.{tool}"
        t0 = time.perf_counter()
        with open(pt, "rb") as src, open(out, "wb") as dst:
            subprocess.run(comp, stdin=src, stdout=dst, check=True)
        c_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with open(out, "rb") as src:
            subprocess.run(decomp, stdin=src, stdout=subprocess.DEVNULL, check=True)
        d_s = time.perf_counter() - t0
        size = out.stat().st_size
        timing[tool] = {"compress_seconds": c_s, "decompress_seconds": d_s}
        rows.append(
            {
                "model": f"synthetic-{fmt_n(total)}",
                "variant": f"torch.save float32 + {' '.join(comp[:2])}",
                "params_total": total,
                "params_nonzero": nonzero,
                "bytes": size,
                "ratio": 4 * total / size,
                "test_error_pct": None,
                "seconds": c_s,
                "decompress_seconds": d_s,
            }
        )
        out.unlink()
    return rows, timing


def stream_rows(label: str, f: codec.DzFile) -> list[dict]:
    """Per tensor and stream: Huffman mean code length against the stream's empirical entropy."""
    rows = []
    for s in f.stats():
        if s["kind"] == "dense":
            continue
        for stream in ("index", "gap"):
            if s.get(f"{stream}_bits") is None:
                continue
            n = s["index_entries"]  # both streams have one symbol per entry
            rows.append(
                {
                    "file": label,
                    "tensor": s["name"],
                    "stream": stream,
                    "symbols": n,
                    "entropy_bits": s[f"{stream}_entropy_bits"],
                    "huffman_bits": s[f"{stream}_bits_per_entry"],
                    "raw_bits": s["raw_bits_per_index"] if stream == "index" else s["gap_width"],
                    "bytes": s["section_bytes"]["indices" if stream == "index" else "gaps"],
                    "count": s["count"],
                    "kept": s["kept"],
                    "fillers": s["fillers"],
                    "k": s["k"],
                    "gap_width": s["gap_width"],
                }
            )
    return rows


def dz_file_baselines(path: str, label: str, tmp: Path, tools: list[str]) -> list[dict]:
    """The same weights as a .dz file (decoded: pruned zeros and shared values baked in) saved by torch.save, then
    gzip -9 / xz -9e / zstd -19: what a user of a generic compressor gets for the very same model."""
    import torch

    from deepzip.io.serialize import load_state_dict

    state = load_state_dict(path)
    total = sum(v.numel() for v in state.values())
    nonzero = sum(int((v != 0).sum()) for v in state.values())
    pt = tmp / "lenet.pt"
    torch.save(state, pt)
    rows = [{"model": label, "variant": "torch.save float32 (same weights)", "params_total": total,
             "params_nonzero": nonzero, "bytes": pt.stat().st_size, "ratio": 4 * total / pt.stat().st_size,
             "test_error_pct": None, "seconds": 0.0}]
    cmds = {"gzip": ["gzip", "-9", "-c"], "xz": ["xz", "-9e", "-T1", "-c"], "zstd": ["zstd", "-19", "-T1", "-c", "-q"]}
    for tool in tools:
        out = tmp / f"lenet.pt.{tool}"
        t0 = time.perf_counter()
        with open(pt, "rb") as src, open(out, "wb") as dst:
            subprocess.run(cmds[tool], stdin=src, stdout=dst, check=True)
        size = out.stat().st_size
        rows.append({"model": label, "variant": f"torch.save float32 + {' '.join(cmds[tool][:2])} (same weights)",
                     "params_total": total, "params_nonzero": nonzero, "bytes": size, "ratio": 4 * total / size,
                     "test_error_pct": None, "seconds": time.perf_counter() - t0})
        out.unlink()
    pt.unlink()
    return rows


def dz_file_rows(paths: list[str], tmp: Path | None = None, tools: list[str] = ()) -> tuple[list[dict], list[dict]]:
    rows, streams = [], []
    for p in paths:
        f = codec.read(p)
        total = sum(t.numel for t in f.tensors.values())
        st = f.stats()
        nonzero = sum(s["kept"] for s in st)
        size = Path(p).stat().st_size
        rows.append(
            {
                "model": f.architecture or Path(p).stem,
                "variant": f"dz file {Path(p).name}",
                "params_total": total,
                "params_nonzero": nonzero,
                "bytes": size,
                "ratio": 4 * total / size,
                "test_error_pct": None,
                "seconds": None,
            }
        )
        streams += stream_rows(Path(p).name, f)
        if tmp is not None and tools:
            rows += dz_file_baselines(p, f.architecture or Path(p).stem, tmp, list(tools))
    return rows, streams


def fuzz(cases: int, seconds: float, seed: int = 0) -> dict:
    """Mutate and truncate a small .dz file; only DeepzipFormatError may escape, fast and small."""
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    tensors = {}
    for i in range(3):
        cb, idx, mask = make_layer(3000, seed=100 + i)
        tensors[f"l{i}.weight"] = codec.encode_sparse(cb, idx, mask)
    tensors["l0.bias"] = codec.encode_dense(rng.normal(size=50).astype(np.float32))
    tensors["emb"] = codec.encode_codebook(np.arange(8, dtype=np.float32), rng.integers(0, 8, (40, 30)))
    base = codec.to_bytes(tensors)
    version, text, data = container._split(base)  # header JSON (decompressed) and sections, for "+crc"
    counts = {"cases": 0, "format_errors": 0, "loaded": 0, "other_errors": 0}
    other = []
    worst_s, worst_peak = 0.0, 0
    t_end = time.perf_counter() + seconds
    tracemalloc.start()
    while counts["cases"] < cases and time.perf_counter() < t_end:
        op = pyrng.choice(["truncate", "flip", "splice", "flip+crc", "flip+crc", "int+crc"])
        # "+crc" ops mutate the header JSON and the sections, then recompress the header and fix every
        # checksum, so the mutations reach the header parser and the decoders; the others mutate the file
        blob = bytearray(text + data if op.endswith("+crc") else base)
        if op == "truncate":
            blob = blob[: pyrng.randrange(len(blob))]
        elif op == "splice":
            i = pyrng.randrange(len(blob))
            blob[i:i] = pyrng.randbytes(pyrng.randrange(1, 32))
        elif op == "int+crc":  # overwrite an 8-byte field with a large value (counts, lengths)
            i = pyrng.randrange(len(blob) - 8)
            blob[i : i + 8] = pyrng.choice([2**63 - 1, 2**32 - 1, 10**12, 0]).to_bytes(8, "little")
        else:
            for _ in range(pyrng.randrange(1, 5)):
                blob[pyrng.randrange(len(blob))] = pyrng.randrange(256)
        if op.endswith("+crc"):
            blob = bytearray(container._join(version, bytes(blob[: len(text)]), bytes(blob[len(text) :])))
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        try:
            f = codec.read(bytes(blob))
            for name in f.tensors:
                f.decode(name)
            counts["loaded"] += 1
        except DeepzipFormatError:
            counts["format_errors"] += 1
        except Exception as e:
            counts["other_errors"] += 1
            other.append(f"{type(e).__name__}: {e}"[:200])
        worst_s = max(worst_s, time.perf_counter() - t0)
        worst_peak = max(worst_peak, tracemalloc.get_traced_memory()[1])
        counts["cases"] += 1
    tracemalloc.stop()
    return {
        **counts,
        "file_bytes": len(base),
        "max_case_seconds": worst_s,
        "max_peak_alloc_bytes": worst_peak,
        "peak_over_file_size": worst_peak / len(base),
        "other_error_examples": other[:10],
    }


def markdown(res: dict) -> str:
    out = ["# Codec benchmark", "", f"`{res['command']}` at commit `{res['commit']}`. {res['note']}", ""]
    out += [
        "## Sizes",
        "",
        "| model | variant | params | nonzero | bytes | ratio vs float32 | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        sec = "" if r["seconds"] is None else f"{r['seconds']:.2f}"
        out.append(
            f"| {r['model']} | {r['variant']} | {r['params_total']:,} | {r['params_nonzero']:,} | "
            f"{r['bytes']:,} | {r['ratio']:.1f} | {sec} |"
        )
    out += [
        "",
        "## Huffman mean code length vs empirical entropy (bits per symbol)",
        "",
        "| file | tensor | stream | symbols | entropy | huffman | raw (fixed width) | bytes |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in res["streams"]:
        out.append(
            f"| {s['file']} | {s['tensor']} | {s['stream']} | {s['symbols']:,} | {s['entropy_bits']:.4f} | "
            f"{s['huffman_bits']:.4f} | {s['raw_bits']} | {s['bytes']:,} |"
        )
    out += [
        "",
        "## Throughput",
        "",
        "| weights | encode weights/s | read+decode weights/s | decode s |",
        "|---:|---:|---:|---:|",
    ]
    for t in res["throughput"]:
        out.append(
            f"| {t['weights']:,} | {t['encode_weights_per_s']:,.0f} | {t['decode_weights_per_s']:,.0f} | "
            f"{t['decode_seconds']:.2f} |"
        )
    if res.get("decode_vs_xz"):
        d = res["decode_vs_xz"]
        out += [
            "",
            (
                f"Decode of the {d['weights']:,}-weight model: .dz read+decode {d['dz_decode_seconds']:.2f} s, "
                f"`xz -d` of the xz -9e checkpoint {d['xz_decompress_seconds']:.2f} s (decompression only, "
                "no torch.load)."
            ),
        ]
    fz = res["fuzz"]
    out += [
        "",
        "## Fuzz",
        "",
        (
            f"{fz['cases']} mutated/truncated files of {fz['file_bytes']} bytes: "
            f"{fz['format_errors']} DeepzipFormatError, {fz['loaded']} loaded, {fz['other_errors']} other errors; "
            f"slowest case {fz['max_case_seconds'] * 1000:.1f} ms; "
            f"peak allocation {fz['max_peak_alloc_bytes']:,} bytes ({fz['peak_over_file_size']:.0f}x the file)."
        ),
    ]
    return "\n".join(out) + "\n"


def _cpu_wall(fn):  # type: ignore[no-untyped-def]
    """(result, CPU seconds of this thread, wall seconds)."""
    c0, w0 = time.thread_time(), time.perf_counter()
    r = fn()
    return r, time.thread_time() - c0, time.perf_counter() - w0


def _cli(cmd: list[str], src: Path, dst: Path | None) -> tuple[float, float]:
    """(CPU seconds of the command, wall seconds) of ``cmd < src > dst``."""
    import os

    r0, w0 = os.times(), time.perf_counter()
    with open(src, "rb") as fi, open(dst or os.devnull, "wb") as fo:
        subprocess.run(cmd, stdin=fi, stdout=fo, check=True)
    r1 = os.times()
    cpu = r1.children_user + r1.children_system - r0.children_user - r0.children_system
    return max(cpu, 0.01), time.perf_counter() - w0  # os.times counts in 10 ms ticks


def shared_decode(total: int, out: Path) -> dict:
    """Decode speed of a pruned (92%), 5-bit weight-shared model of ``total`` weights, one thread, against ``xz -d``
    and ``zstd -d`` of the same dense float32 weights. Writes ``codec_shared_decode.{json,md}``."""
    from deepzip.codec import _fast

    tmp = Path(tempfile.mkdtemp(prefix="dzdecode"))
    try:
        path, raw = tmp / "shared.dz", tmp / "dense.f32"
        with codec.DzWriter(path) as w, open(raw, "wb") as f:
            for name, parts in layers(total):
                w.add(codec.encode_sparse(*parts, name=name))
                f.write(dense(*parts).tobytes())
        dz_bytes = path.stat().st_size
        r = codec.DzReader(path, max_bytes=None)
        tensors = [r.tensor(n) for n in r.names]  # sections read and checksummed: decoding alone is timed
        positions = [np.flatnonzero(make_layer(t.numel, seed=i)[2]) for i, t in enumerate(tensors)]
        exact = all(np.array_equal(codec.decode(t), dense(*make_layer(t.numel, seed=i)))
                    for i, t in enumerate(tensors[:2]))

        def touch_only() -> list[np.ndarray]:  # the memory alone: zeroed arrays, the kept positions written
            out = []
            for pos, t in zip(positions, tensors):
                a = np.zeros(t.numel, np.float32)
                a[pos] = 1.0
                out.append(a)
            return out

        # Three rounds, interleaved (the machine is shared and noisy): every decoded array kept, as a caller would
        # (memory the OS must provide: page faults, and on this VM new pages from the host, whose price varies run
        # to run), the same memory cost without decoding, then each array dropped before the next (memory the
        # process already holds: the steady state of a loop that consumes layer by layer, e.g. copying each into
        # its parameter).
        cases: dict[str, list[tuple[float, float]]] = {"kept": [], "touch": [], "dropped": []}
        for _ in range(3):
            kept_arrays, c, w = _cpu_wall(lambda: [codec.decode(t) for t in tensors])
            cases["kept"].append((c, w))
            del kept_arrays
            touched, c, w = _cpu_wall(touch_only)
            cases["touch"].append((c, w))
            del touched
            _, c, w = _cpu_wall(lambda: [codec.decode(t).size for t in tensors])
            cases["dropped"].append((c, w))
        labels = {"kept": "deepzip decode (.dz sections in memory -> float32 arrays, kept)",
                  "touch": "(control) fresh zeroed arrays with the kept positions written, no decoding",
                  "dropped": "deepzip decode (each array dropped before the next: memory reused)"}
        rows = []
        for key, runs in cases.items():
            cpu = sorted(total / c / 1e6 for c, _ in runs)
            wall = sorted(total / w / 1e6 for _, w in runs)
            rows.append({"decoder": labels[key], "bytes": dz_bytes if key != "touch" else 0,
                         "M weights/s (CPU), best": cpu[-1], "median": cpu[1], "worst": cpu[0],
                         "M weights/s (wall), best": wall[-1]})
        for tool, comp, decomp in (("xz -6 -T1 / xz -d -T1", ["xz", "-6", "-T1", "-c"], ["xz", "-d", "-T1", "-c"]),
                                   ("zstd -19 -T1 / zstd -d", ["zstd", "-19", "-T1", "-c", "-q"],
                                    ["zstd", "-d", "-c", "-q"])):
            packed = tmp / "dense.packed"
            _cli(comp, raw, packed)
            c, w = _cli(decomp, packed, None)
            rows.append({"decoder": f"{tool} of the dense float32 weights (to /dev/null)",
                         "bytes": packed.stat().st_size, "M weights/s (CPU), best": total / c / 1e6,
                         "median": None, "worst": None, "M weights/s (wall), best": total / w / 1e6})
            packed.unlink()
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import os

    res = {"benchmark": "codec_shared_decode", "commit": commit(), "weights": total,
           "command": f"PYTHONPATH=src python benchmarks/codec.py --shared-decode {fmt_n(total)}",
           "compiled_stage": _fast.available(), "bit_exact_first_layers": exact, "rows": rows,
           "loadavg_at_end": os.getloadavg(), "target_M_weights_per_s": 500}
    md = (f"# Decoding a weight-shared model: {fmt_n(total)} weights, 92% pruned, 5-bit codebook\n\n"
          f"Command: `{res['command']}`  \nCommit: `{res['commit']}`  \nLoad average at the end: "
          f"{res['loadavg_at_end'][0]:.1f} (2 shared cores: wall includes waiting for the CPU; CPU = this thread's "
          f"seconds). Compiled stage: {res['compiled_stage']}. Decoded layers equal the model: {exact}. Target (issue "
          f"24): >= 500M weights/s on one thread. deepzip rows: three interleaved rounds (best / median / worst); "
          f"the tools ran once. `kept` pays for 400 MB of memory the OS must provide (first-touch page faults; on "
          f"this VM, pages the host must supply again cost up to ~2 ms a MB, and how many it must varies run to "
          f"run): the control row is that cost alone, without decoding. `dropped` decodes into memory the process "
          f"already holds.\n\n" + _md_rows(rows))
    out.mkdir(parents=True, exist_ok=True)
    (out / "codec_shared_decode.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "codec_shared_decode.md").write_text(md)
    print(md)
    return res


def _md_rows(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:,.0f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                                        else "" if v is None else str(v) for v in r.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--size", nargs="+", default=["10M", "100M"], help="synthetic model sizes for .dz (e.g. 10M 100M)"
    )
    p.add_argument("--baseline-size", default="10M", help="model size for torch.save + gzip/xz/zstd")
    p.add_argument("--baselines", nargs="*", default=["gzip", "xz", "zstd"], choices=["gzip", "xz", "zstd"])
    p.add_argument("--quick", action="store_true", help="1M weights, a 500-case fuzz")
    p.add_argument("--fuzz-cases", type=int, default=3000)
    p.add_argument("--fuzz-seconds", type=float, default=120.0)
    p.add_argument("--dz", nargs="*", default=[], help="existing .dz files to add per-stream rows for")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--shared-decode", metavar="SIZE", help="only the decode-speed comparison at SIZE weights")
    a = p.parse_args(argv)
    if a.shared_decode:
        shared_decode(parse_size(a.shared_decode), a.out)
        return 0
    if a.quick:
        a.size, a.baseline_size, a.fuzz_cases = ["1M"], "1M", 500
    sizes = [parse_size(s) for s in a.size]
    bsize = parse_size(a.baseline_size)
    res: dict = {
        "benchmark": "codec",
        "commit": commit(),
        "command": "python benchmarks/codec.py " + " ".join(sys.argv[1:] if argv is None else argv).strip(),
        "rows": [],
        "streams": [],
        "throughput": [],
    }
    res["command"] = res["command"].strip()
    tmp = Path(tempfile.mkdtemp(prefix="dzbench"))
    try:
        dz_rows = {}
        for n in sizes:
            row, _st = dz_run(n, tmp)
            print(
                f"dz {n:,}: {row['bytes']:,} bytes, ratio {row['ratio']:.1f}, enc {row['encode_seconds']:.1f}s, "
                f"read+dec {row['read_decode_seconds']:.1f}s",
                flush=True,
            )
            res["rows"].append(row)
            dz_rows[n] = row
            res["throughput"].append(
                {
                    "weights": n,
                    "encode_weights_per_s": row["encode_weights_per_s"],
                    "decode_weights_per_s": row["decode_weights_per_s"],
                    "decode_seconds": row["read_decode_seconds"],
                }
            )
            res["streams"] += stream_rows(f"synthetic-{fmt_n(n)}", codec.read(tmp / f"synthetic{n}.dz"))[:2]
            (tmp / f"synthetic{n}.dz").unlink()
        if a.baselines:
            brows, timing = baselines(bsize, tmp, a.baselines)
            for r in brows:
                print(
                    f"{r['variant']} {bsize:,}: {r['bytes']:,} bytes, ratio {r['ratio']:.1f}, {r['seconds']:.1f}s",
                    flush=True,
                )
            res["rows"] += brows
            res["baseline_timing"] = timing
            if "xz" in timing:
                if bsize not in dz_rows:
                    row, _ = dz_run(bsize, tmp)
                    dz_rows[bsize] = row
                res["decode_vs_xz"] = {
                    "weights": bsize,
                    "dz_decode_seconds": dz_rows[bsize]["read_decode_seconds"],
                    "xz_decompress_seconds": timing["xz"]["decompress_seconds"],
                }
        rows, streams = dz_file_rows(a.dz, tmp, a.baselines)
        res["rows"] += rows
        res["streams"] += streams
        res["fuzz"] = fuzz(a.fuzz_cases, a.fuzz_seconds)
        print(f"fuzz: {res['fuzz']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["note"] = (
        f".dz rows at {', '.join(fmt_n(n) for n in sizes)} weights; torch.save + gzip/xz/zstd baselines "
        f"measured at {fmt_n(bsize)} weights (CLI tools, one thread). Ratios are against 4 bytes per "
        "weight. 2 shared CPU cores."
    )
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "codec.json").write_text(json.dumps(res, indent=1) + "\n")
    (a.out / "codec.md").write_text(markdown(res))
    return 1 if res["fuzz"]["other_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
