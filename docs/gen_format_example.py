"""Generate section 5 of docs/FORMAT.md (the annotated example) from the real bytes."""
import json
import struct
import zlib

import numpy as np

from deepzip import codec
from deepzip.codec import container

t = {"w": codec.encode_sparse(np.array([-0.5, 0.5], np.float32), np.array([1, 0, 0, 0, 0, 0, 0, 1]),
                             np.array([1, 0, 0, 0, 0, 0, 0, 1], bool), gap_width=2),
     "b": codec.encode_dense(np.array([1.0], np.float32))}
blob = codec.to_bytes(t)
_, major, minor, hcrc, H = container._PRE.unpack_from(blob, 0)
stored = blob[24 : 24 + H]
text = zlib.decompress(stored)
header = json.loads(text)
D = -(-(24 + H) // 8) * 8
assert D + header["data_size"] == len(blob)


def hexdump(b):
    lines = []
    for o in range(0, len(b), 16):
        row = b[o : o + 16]
        hx = " ".join(row[i : i + 2].hex() for i in range(0, len(row), 2))
        asc = "".join(chr(c) if 32 <= c < 127 else "." for c in row)
        lines.append(f"{o:08x}: {hx:<39}  {asc}")
    return "\n".join(lines)


def hb(b):
    return " ".join(f"{c:02x}" for c in b)


secs = {(tt["name"], s): d for tt in header["tensors"] for s, d in tt["sections"].items()}
rows = [
    ("`0x000-0x007`", "magic"),
    (f"`0x008` `{hb(blob[8:10])}`, `0x00a` `{hb(blob[10:12])}`", f"version {major}.{minor}"),
    (f"`0x00c` `{hb(blob[12:16])}`", f"CRC-32 of the {H} stored header bytes (0x{hcrc:08x})"),
    (f"`0x010` `{hb(blob[16:24])}`", f"H = {H}"),
    (
        f"`0x018-0x{24 + H - 1:03x}`",
        f"header: zlib stream (`{hb(stored[:2])}` = deflate, 32 KiB window, level 9) of the {len(text)}-byte JSON "
        f"above; zero padding `0x{24 + H:03x}-0x{D - 1:03x}` to D = `0x{D:03x}` ({D})",
    ),
]


def at(name, sec):
    return D + secs[(name, sec)]["offset"]


o = at("w", "codebook")
rows.append((f"`0x{o:03x}` `{hb(blob[o:o+8])}`", f"`w/codebook` (offset {secs[('w','codebook')]['offset']}): float32 -0.5, 0.5"))
for sec, extra in [("indices", None), ("gaps", None)]:
    o = at("w", sec)
    d = secs[("w", sec)]
    count, nbits, A, sync, _ = struct.unpack_from("<QQIHH", blob, o)
    rows.append((f"`0x{o:03x}` `{hb(blob[o:o+2])} .. 00`, `0x{o+8:03x}` `{hb(blob[o+8:o+10])} .. 00`",
                 f"`w/{sec}` (offset {d['offset']}, length {d['length']}): count {count}" + (" (kept, filler, kept)" if sec == "indices" else "") + f", nbits {nbits}"))
    rows.append((f"`0x{o+16:03x}` `{hb(blob[o+16:o+20])}` `{hb(blob[o+20:o+22])}` `{hb(blob[o+22:o+24])}`",
                 f"alphabet {A}" + (" (k = 2 + filler)" if sec == "indices" else "") + f", sync {sync}, reserved; no sync deltas (count <= sync)"))
    rows.append((f"`0x{o+24:03x}` `{hb(blob[o+24:o+24+A])}`", "LENGTHS_" + sec))
    p = o + 24 + A  # S = 0 sync deltas (count <= sync)
    rows.append((f"`0x{p:03x}` `{hb(blob[p:p+(nbits+7)//8])}`", "PAYLOAD_" + sec))
    end = o + d["length"]
    nxt = -(-(end - D) // 8) * 8 + D
    if nxt > end:
        rows.append((f"`0x{end:03x}-0x{nxt - 1:03x}`", "zero padding to the next multiple of 8"))
o = at("b", "data")
rows.append((f"`0x{o:03x}` `{hb(blob[o:o+4])}`", f"`b/data` (offset {secs[('b','data')]['offset']}): float32 1.0; end of file"))

text_for = {
    "LENGTHS_indices": "code lengths: symbol 0 unused, symbol 1 -> `0`, symbol 2 (filler) -> `1`",
    "PAYLOAD_indices": "payload `010` + padding: symbols 1, 2, 1",
    "LENGTHS_gaps": "lengths: gap 3 -> `0`, gap 0 -> `10`, gap 2 -> `11`",
    "PAYLOAD_gaps": "payload `10 0 11` + padding: gaps 0, 3, 2 -> positions 0, 4 (filler), 7",
}
out = []
out.append(f"The file is {len(blob)} bytes: the {len(text)}-byte header JSON is stored as H = 0x{H:x} = {H} bytes\n"
           f"of zlib data, and the sections start at D = 0x{D:x} = {D}. The header JSON, as decompressed from bytes\n"
           f"`0x018-0x{24 + H - 1:03x}` (the section `offset`s count from D):")
out.append("")
out.append("```json")
out.append(text.decode())
out.append("```")
out.append("")
out.append("```")
out.append(hexdump(blob))
out.append("```")
out.append("")
out.append("| bytes | meaning |")
out.append("|---|---|")
for a, m in rows:
    out.append(f"| {a} | {text_for.get(m, m)} |")
print("\n".join(out))
print("\n<!-- header JSON -->", json.dumps(header["tensors"][0]["sections"]["codebook"]), header["data_size"], file=__import__("sys").stderr)
