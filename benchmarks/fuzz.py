"""Fuzz the ``.dz`` reader: mutated files must end in deepzip's own errors, within a memory cap and a time limit.

Seeds: real files (a pruned + weight-shared ``mlp30`` saved by :func:`deepzip.save`, an unpruned one stored
losslessly, a codec file with every tensor kind and dtype, 0-d and empty tensors, and a format 1.4 file: float16
codebooks, short streams, the preset header dictionary). Each case takes a seed and
one of three mutation families:

- ``raw``: bit flips, byte overwrites, inserted/deleted/duplicated byte runs, truncation, splices of two seeds;
  mostly caught by the checksums;
- ``crc``: the same mutations applied behind the zlib stream and the checksums (to the header JSON text and to the
  section bytes), then every checksum recomputed, so they reach the JSON parser and the decoders;
- ``lie``: a parsed header with one field replaced by a lying value (huge or negative sizes and shapes such as
  ``[0, 2**63]``, wrong kinds/dtypes/k/gap widths/kept counts, overlapping or moved sections, architectures
  naming code such as ``os:abort`` or ``sys:exit``, deeply nested or huge configs, header zip bombs), checksums
  recomputed.

Every case runs the whole read path in a worker process: ``codec.read`` (``max_bytes`` = 16 MiB), decoding
every tensor (``decode``, ``decode_parts``, ``stats`` with entropies) and ``deepzip.load`` (which builds the
model the file names; without ``trust_code``). Outcomes: ``ok`` (the file loads), ``rejected`` (a
``DeepzipError``, by class), and the failures the run must not have: ``unexpected`` (any other exception type),
``memory`` (MemoryError under the cap), ``timeout`` (a case over its time limit), ``crash`` (the worker died).
Workers are long-lived (cases are generated inside them from (seed, case number), many per batch) and run under
RLIMIT_AS = their address space after start-up + the cap; each case's peak Python/numpy heap is measured with
tracemalloc on every 10th case (it slows a case ~4x); the address-space cap holds for every case.

Run: ``OMP_NUM_THREADS=1 python benchmarks/fuzz.py --cases 100000 --workers 1``
(``--quick`` for 3,000 cases; ``--seconds S`` stops after the batch that passes S seconds and reports the cases
actually run). ``DEEPZIP_CODEC=numpy`` fuzzes the numpy decoders instead of the compiled stage. Results:
benchmarks/results/fuzz.json and fuzz.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MAX_BYTES = 16 << 20  # max_bytes the reader is given: the most the tensors of a file may decode to
MEM_CAP = 256 << 20  # RLIMIT_AS headroom over the worker's address space after start-up
TRACE_EVERY = 10  # tracemalloc (peak heap) on every 10th case: it slows a case ~4x
CASE_TIMEOUT = 10.0  # seconds per case (SIGALRM in the worker); the parent kills a batch stuck longer
BATCH = 500

# --------------------------------------------------------------------------------------------- seed files


def make_seeds() -> list[bytes]:
    import numpy as np
    import torch

    from deepzip import codec
    from deepzip.io.serialize import encode_model
    from deepzip.models import get_model
    from deepzip.techniques.prune import prune_
    from deepzip.techniques.share import share_weights_

    seeds = []
    m = share_weights_(prune_(get_model("mlp30"), sparsity=0.9), 3, progress=False)
    tensors, kinds = encode_model(m)
    seeds.append(codec.to_bytes(tensors, architecture="mlp30", config={"bits": 3}, extra={"layers": kinds}))
    plain = get_model("mlp30", seed=1)
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(torch.round(p * 8) / 8)  # few distinct values: stored as codebook tensors, losslessly
    tensors, kinds = encode_model(plain)
    seeds.append(codec.to_bytes(tensors, architecture="mlp30", extra={"layers": kinds}))
    rng = np.random.default_rng(0)
    w = rng.laplace(size=(40, 30)).astype(np.float32)
    cb = np.linspace(-4, 4, 32).astype(np.float32)
    t = {
        "s": codec.encode_sparse(cb, rng.integers(0, 32, w.shape), np.abs(w) > 1.5),
        "s0": codec.encode_sparse(cb[:1], np.zeros(50, np.int64), np.zeros(50, bool), gap_width=2),
        "c": codec.encode_codebook(cb[:5], rng.integers(0, 5, (7, 3, 2))),
        "d32": codec.encode_dense(rng.normal(size=30).astype(np.float32)),
        "i64": codec.encode_dense(np.int64(12)),
        "f16": codec.encode_dense(rng.normal(size=(3, 0, 2)).astype(np.float16)),
        "b": codec.encode_dense(rng.random(9) < 0.5),
        "u8": codec.encode_dense(rng.integers(0, 255, 5).astype(np.uint8)),
    }
    seeds.append(codec.to_bytes(t, config={"note": "codec seed"}))
    # format 1.4: float16 codebooks, short Huffman streams, the preset header dictionary (a shared mlp30 whose
    # centroids are float16 values, as PipelineConfig.centroids_float16 leaves them)
    from deepzip.techniques.share import round_centroids_

    m14 = round_centroids_(share_weights_(prune_(get_model("mlp30", seed=2), sparsity=0.9), 3, progress=False))
    tensors, kinds = encode_model(m14)
    seeds.append(codec.to_bytes(tensors, architecture="mlp30", config={"bits": 3}, extra={"layers": kinds}))
    return seeds


# --------------------------------------------------------------------------------------------- mutations
INTERESTING = [0, 1, -1, 2, 7, 8, 255, 256, 65535, 65536, 65537, 2**31 - 1, 2**31, 2**32, 2**32 + 8, 2**53,
               2**62, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63), 1.5, 1e308, True, False, None, "", "x", [], {}]
CODE_NAMES = ["os:abort", "sys:exit", "builtins:input", "faulthandler:_sigsegv", "antigravity:x", "os.path:join",
              "lenet5", "lenet300", "mlp30", "nosuch", "deepzip.models:LeNet300", ":", "a:b:c"]


def mutate_bytes(rng: random.Random, b: bytes, other: bytes) -> bytes:
    """1-4 random byte-level edits."""
    x = bytearray(b)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
        op = rng.randrange(8)
        n = len(x)
        if n == 0:
            x = bytearray(rng.randbytes(rng.randrange(1, 64)))
            continue
        i = rng.randrange(n)
        if op == 0:  # bit flip
            x[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # byte overwrite
            x[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:  # little-endian integer overwrite
            v = rng.choice((0, 1, 2**16 - 1, 2**32 - 1, 2**63, 2**64 - 1, rng.randrange(2**64)))
            w = rng.choice((2, 4, 8))
            x[i : i + w] = (v % (1 << (8 * w))).to_bytes(w, "little")
        elif op == 3:  # delete a run
            del x[i : i + rng.choice((1, 2, 8, rng.randrange(1, 256)))]
        elif op == 4:  # insert a run
            x[i:i] = rng.randbytes(rng.choice((1, 8, rng.randrange(1, 64))))
        elif op == 5:  # duplicate a run
            j = rng.randrange(n)
            x[i:i] = x[j : j + rng.randrange(1, 128)]
        elif op == 6:  # truncate
            del x[i:]
        else:  # splice from another seed
            j = rng.randrange(len(other))
            x[i : i + rng.randrange(1, 256)] = other[j : j + rng.randrange(1, 256)]
    return bytes(x)


def _paths(obj, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def lie(rng: random.Random, header: dict) -> dict | bytes:
    """A header with one lying field (or a hostile structure); bytes when the JSON text itself is the attack."""
    r = rng.randrange(12)
    tensors = header.get("tensors") or [{}]
    t = rng.choice(tensors)
    if r == 0:  # any field -> an interesting value
        paths = [p for p, _ in _paths(header) if p]
        _set(header, rng.choice(paths), rng.choice(INTERESTING))
    elif r == 1:  # any int field -> a nearby or huge int
        paths = [(p, v) for p, v in _paths(header) if isinstance(v, int) and not isinstance(v, bool)]
        if paths:
            p, v = rng.choice(paths)
            _set(header, p, rng.choice((v + 1, v - 1, v * 2, v + 8, v - 8, -v, v + 2**32, v * 2**20, 2**63 - v)))
    elif r == 2:  # impossible or huge shapes
        t["shape"] = rng.choice(([0, 2**63], [0, 2**62, 2**62], [2**32, 2**32], [10**6] * 3, [0] * 65,
                                 [1] * 64 + [0], [-1], [2**31] * 2, [3, 0, 2**70], [1 << 24, 1 << 16],
                                 [rng.randrange(1, 10**7)], [1 << rng.randrange(0, 40)]))
    elif r == 3:  # meta lies
        meta = t.setdefault("meta", {})
        key = rng.choice(("k", "gap_width", "kept", "extra"))
        meta[key] = rng.choice((0, 1, 16, 17, 65536, 65537, -1, 2**40, None, "8"))
    elif r == 4:  # kind / dtype swaps
        t[rng.choice(("kind", "dtype"))] = rng.choice(("dense", "codebook", "sparse", "float32", "float64",
                                                       "int64", "bool", "object", "<f4", "float128", "V8"))
    elif r == 5:  # move, resize, duplicate or drop sections
        secs = t.get("sections") or {}
        if secs:
            name = rng.choice(list(secs))
            d = secs[name]
            op = rng.randrange(4)
            if op == 0:
                d["offset"] = rng.choice((0, 8, d.get("offset", 0) + 8, header.get("data_size", 0)))
            elif op == 1:
                d["length"] = rng.choice((0, 1, d.get("length", 0) + 8, 2**63))
            elif op == 2:
                secs[name + "x"] = dict(d)
            else:
                del secs[name]
    elif r == 6:  # architecture naming code or unknown models
        header["architecture"] = rng.choice(CODE_NAMES)
    elif r == 7:  # duplicate or renamed tensors
        if rng.random() < 0.5:
            tensors.append(json.loads(json.dumps(t)))
        else:
            t["name"] = rng.choice(("", "x" * 10000, tensors[0].get("name", "a"), "fc1.weight", "\u0000"))
    elif r == 8:  # layer kinds lie
        header.setdefault("extra", {})["layers"] = rng.choice(
            ({"fc1.weight": "shared"}, {"layers.0.weight": "masked"}, {"layers.0.weight": "exec"}, [], "x"))
    elif r == 9:  # deep nesting or many values in config (header structure bombs)
        n = rng.choice((100, 1000, 5000, 60_000))
        return (json.dumps(header)[:-1] + ',"z":' + "[" * n + "]" * n + "}").encode() if rng.random() < 0.5 else (
            json.dumps(header)[:-1] + ',"z":[' + ",".join(["[]"] * (n * 20)) + "]}").encode()
    elif r == 10:  # a tensor claiming a huge all-pruned run (decompression bomb) with a valid stream
        t.update(kind="sparse", dtype="float32", shape=[rng.choice((1 << 24, 1 << 28, 1 << 33, 10**12))])
        t.setdefault("meta", {}).update(gap_width=16)
    else:  # data_size lies
        header["data_size"] = rng.choice((0, header.get("data_size", 0) + 8, 2**63, -8))
    return header


def make_case(seeds: list[bytes], seed: int, i: int) -> tuple[str, bytes]:
    from deepzip.codec import container

    rng = random.Random(seed * 1_000_003 + i)
    base = rng.choice(seeds)
    other = rng.choice(seeds)
    family = ("raw", "crc", "lie")[i % 3]
    if family == "raw":
        return family, mutate_bytes(rng, base, other)
    version, text, data = container._split(base)
    if family == "crc":
        if rng.random() < 0.5:
            text = mutate_bytes(rng, text, text)
        else:
            data = mutate_bytes(rng, data, other)
        return family, container._join(version, text, data)
    header = json.loads(text)
    lied = lie(rng, header)
    if rng.random() < 0.1:
        version = (1, rng.choice((0, 1, 65535)))
    if isinstance(lied, bytes):  # a structure bomb: the section checksums are still right, pack it as it is
        return family, container._pack(version, zlib.compress(lied, 6), data)
    return family, container._join(version, json.dumps(lied).encode(), data)


# --------------------------------------------------------------------------------------------- worker


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout()


def run_case(blob: bytes) -> str:
    from deepzip import codec
    from deepzip.codec._tensor import KIND_TABLE
    from deepzip.io.serialize import load, load_state_dict

    f = codec.read(blob, max_bytes=MAX_BYTES)
    for name, t in f.tensors.items():
        f.decode(name)
        if KIND_TABLE[t.kind].shared:  # one codebook + indices (planes, grouped, tiered refuse with ValueError)
            f.decode_parts(name)
    f.stats(entropy=True)
    if f.architecture:
        load(blob, max_bytes=MAX_BYTES)  # builds the model the file names (registered names only)
    else:
        load_state_dict(blob, max_bytes=MAX_BYTES)
    return "ok"


def worker(conn, seed: int) -> None:
    import resource
    import tracemalloc

    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from deepzip.errors import DeepzipError

    seeds = make_seeds()
    for s in seeds:  # warm every code path once before the cap is set
        run_case(s)
    vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEM_CAP, vm + MEM_CAP))
    signal.signal(signal.SIGALRM, _alarm)
    conn.send(("ready", vm))
    while True:
        job = conn.recv()
        if job is None:
            return
        lo, hi = job
        counts: collections.Counter = collections.Counter()
        notes = []
        peak_max = (0, -1)
        slowest = (0.0, -1)
        for i in range(lo, hi):
            family, blob = make_case(seeds, seed, i)
            traced = i % TRACE_EVERY == 0
            if traced:
                tracemalloc.start()
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT)
            try:
                outcome = run_case(blob)
            except DeepzipError as e:
                outcome = "rejected:" + type(e).__name__
            except CaseTimeout:
                outcome = "timeout"
                notes.append((i, family, "timeout"))
            except MemoryError:
                outcome = "memory"
                notes.append((i, family, "MemoryError"))
            except Exception as e:
                outcome = "unexpected:" + type(e).__name__
                notes.append((i, family, f"{type(e).__name__}: {str(e)[:200]}"))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            dt = time.perf_counter() - t0
            peak = 0
            if traced:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            counts[(family, outcome)] += 1
            if peak > peak_max[0]:
                peak_max = (peak, i, len(blob))
            if dt > slowest[0]:
                slowest = (dt, i)
        conn.send(("done", dict(counts), notes, peak_max, slowest))


# --------------------------------------------------------------------------------------------- parent


class Pool:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.start()

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker, args=(child, self.seed), daemon=True)
        self.proc.start()
        child.close()  # so that a dead worker reads as EOF here, not as a wait forever
        if not self.conn.poll(600):
            raise SystemExit("fuzz worker did not start within 600 s")
        msg = self.conn.recv()  # EOFError: the worker died while starting (its traceback is on stderr)
        assert msg[0] == "ready"
        self.vm = msg[1]

    def run(self, lo: int, hi: int, limit: float):
        self.conn.send((lo, hi))
        if self.conn.poll(limit):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        self.proc.kill()
        self.proc.join()
        self.start()
        return None

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


def main() -> None:
    from _common import write_results

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="3,000 cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="(only 1 is implemented: the machine is shared)")
    ap.add_argument("--name", default="fuzz")
    ap.add_argument("--seconds", type=float, default=None, help="stop after the batch that passes this wall time")
    a = ap.parse_args()
    cases = 3000 if a.quick else a.cases
    pool = Pool(a.seed)
    counts: collections.Counter = collections.Counter()
    notes: list = []
    peak = (0, -1, 0)
    slowest = (0.0, -1)
    t0 = time.perf_counter()
    planned = cases
    for lo in range(0, planned, BATCH):
        if a.seconds is not None and time.perf_counter() - t0 > a.seconds:
            cases = lo  # the cases actually run
            break
        hi = min(planned, lo + BATCH)
        res = pool.run(lo, hi, CASE_TIMEOUT * 2 + 60)
        if res is None:  # the worker died or hung: replay the batch one case at a time to name the case
            for i in range(lo, hi):
                r = pool.run(i, i + 1, CASE_TIMEOUT * 2 + 30)
                if r is None:
                    counts[(("raw", "crc", "lie")[i % 3], "crash")] += 1
                    notes.append((i, ("raw", "crc", "lie")[i % 3], "worker died or hung"))
                else:
                    counts.update({tuple(k): v for k, v in r[1].items()})
                    notes += r[2]
            continue
        _, c, n, pk, sl = res
        counts.update(c)
        notes += n
        peak = max(peak, tuple(pk))
        slowest = max(slowest, tuple(sl))
        done = hi
        rate = done / (time.perf_counter() - t0)
        if done % 5000 == 0 or done == cases:
            bad = sum(v for (f, o), v in counts.items() if not (o == "ok" or o.startswith("rejected")))
            print(f"{done} cases, {rate:.0f}/s, {bad} failures, peak {peak[0] / 2**20:.1f} MiB", flush=True)
    pool.close()
    wall = time.perf_counter() - t0
    families = ("raw", "crc", "lie")
    outcomes = sorted({o for (_, o) in counts})
    rows = [{"outcome": o, **{f: counts.get((f, o), 0) for f in families},
             "total": sum(counts.get((f, o), 0) for f in families)} for o in outcomes]
    bad = {o: r["total"] for o, r in zip(outcomes, rows) if not (o == "ok" or o.startswith("rejected"))}
    clean = "no hang, no crash, no MemoryError, no exception type other than DeepzipError subclasses"
    verdict = (f"{cases:,} cases in {wall:.0f} s ({cases / wall:.0f}/s, 1 worker): "
               f"{sum(bad.values())} failures ({bad or clean}); slowest case {slowest[0]:.2f} s (#{slowest[1]}); "
               f"peak traced heap per traced case (1 in {TRACE_EVERY}) {peak[0] / 2**20:.1f} MiB (#{peak[1]}, "
               f"a {peak[2]:,}-byte file) with max_bytes = "
               f"{MAX_BYTES / 2**20:.0f} MiB; every case under RLIMIT_AS = start-up address space + "
               f"{MEM_CAP / 2**20:.0f} MiB and a {CASE_TIMEOUT:.0f} s alarm")
    from deepzip.codec import _fast

    verdict += (f"; decoders: {'compiled stage (codec/_huffc.c)' if _fast.available() else 'numpy'}"
                + (f"; stopped by --seconds {a.seconds:.0f} after {cases:,} of {planned:,} planned cases"
                   if cases < planned else ""))
    print(verdict)
    cmd = (f"OMP_NUM_THREADS=1 python benchmarks/fuzz.py --cases {planned} --seed {a.seed}"
           + (f" --seconds {a.seconds:.0f}" if a.seconds is not None else ""))
    write_results(a.name, rows, cmd, title="Fuzzing the .dz reader (read, decode, stats, load)",
                  sections={"Verdict": verdict + "\n", "Failures (first 50)": "\n".join(
                      f"- case {i} ({f}): {m}" for i, f, m in notes[:50]) + "\n" if notes else "none\n",
                      "Setup": __doc__.split("Run:")[0]},
                  extra={"cases": cases, "wall_s": wall, "max_bytes": MAX_BYTES, "mem_cap_bytes": MEM_CAP,
                         "case_timeout_s": CASE_TIMEOUT, "peak_traced_bytes": peak[0], "slowest_case_s": slowest[0],
                         "failures": notes[:200], "worker_address_space_at_start": pool.vm})


if __name__ == "__main__":
    main()
