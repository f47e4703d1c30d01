"""``deepzip distill``: train a student from a teacher checkpoint (Hinton et al. 2015); registered by cli.py."""

from __future__ import annotations

import argparse
import time

from ._common import (
    _SOURCES,
    _check_output,
    _data,
    _load_model,
    _reader_args,
    _train_cfg,
    args,
    command,
    print_table,
)


def _cfg_distill(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help=f"the teacher: {_SOURCES}")
    p.add_argument("--teacher-model", default=None, help="teacher architecture when the checkpoint names none")
    p.add_argument("--student", default="mlp800", help="lenet300, lenet5, mlp800, mlp30, ... or pkg.mod:factory")
    p.add_argument("-T", "--temperature", type=float, default=20.0, help="softmax temperature (default 20)")
    p.add_argument("--alpha", type=float, default=0.9,
                   help="weight of the soft-target term; 1-alpha goes to the labels (default 0.9)")
    p.add_argument("-o", "--output", required=True, help="student checkpoint to write (.safetensors)")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="run the teacher every step instead of caching its logits once")
    _reader_args(p, train=True)


@command("distill", "train a student model from a teacher checkpoint (knowledge distillation)")
@args(_cfg_distill)
def cmd_distill(a: argparse.Namespace) -> int:
    from ..io.checkpoint import save_checkpoint
    from ..models import get_model
    from ..techniques.distill import distill
    from ..train import evaluate

    if not a.temperature > 0:
        raise ValueError(f"-T {a.temperature}: the temperature must be > 0")
    if not 0.0 <= a.alpha <= 1.0:
        raise ValueError(f"--alpha {a.alpha}: expected a weight in [0, 1]")
    _check_output(a.output, a.teacher)
    teacher, _ = _load_model(a.teacher, a.teacher_model, a.trust_code, a.max_bytes)
    student = get_model(a.student, trust_code=True)  # the user's own --student: trusted
    train, test = _data(a, label_with=teacher)
    cfg = _train_cfg(a, a.student)
    t0 = time.time()
    distill(student, teacher, train, cfg, temperature=a.temperature, alpha=a.alpha, cache=a.cache,
            desc=f"distill {a.student}")
    seconds = time.time() - t0
    t_res, s_res = evaluate(teacher, test), evaluate(student, test)
    save_checkpoint(student, a.output, meta={
        "test_error_pct": s_res.error_pct, "train": cfg.to_dict(),
        "distill": {"teacher": str(a.teacher), "teacher_test_error_pct": t_res.error_pct,
                    "temperature": a.temperature, "alpha": a.alpha, "cache": a.cache, "jitter": cfg.jitter,
                    "seconds": seconds},
    })
    print_table(
        [{"role": "teacher", "errors": t_res.errors, "error_pct": t_res.error_pct},
         {"role": f"student {a.student}", "errors": s_res.errors, "error_pct": s_res.error_pct}],
        [("role", "model", ""), ("errors", f"errors/{t_res.n}", "d"), ("error_pct", "test error %", ".2f")],
    )
    print(f"distilled {a.student} at T={a.temperature:g}, alpha={a.alpha:g}, {cfg.epochs} epochs, "
          f"{seconds:.0f}s -> {a.output}")
    return 0
