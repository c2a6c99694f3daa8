#!/usr/bin/python3
"""Compare what the C driver wrote to CASE_DIR/out/ with the float64 PyTorch reference.

  compare.py CASE_DIR [--ours DIR]

One line per tensor (ok/FAIL, name, error, threshold) and a summary; exit 1 on any failure or missing
file, 0 otherwise. Errors are ||ours - ref|| / ||ref|| per tensor, over non-pad positions (t < lengths[b])
for logits, hidden states and the input-embedding gradient; loss components are compared one by one.
Where the reference is exactly zero (e.g. an alignment term in mode off) ours must be within 1e-6.

model.dtype bf16 cases: the C model rounds every matrix-product operand to bf16. A float32 difference
of d in an operand carries it across a bf16 rounding boundary with probability about d / 2^-8, and each
crossing moves the product by a bf16 step, so two correct implementations (float32 C, float64 torch)
agree only to about 1e-3 (measured over seeds 21-25: forward 1.3e-3, gradients 5.0e-3, trained
parameters 3.6e-4, losses 6.7e-4). The thresholds are three times those, and a second check keeps the
test sharp: every tensor must also be at least 1.5 times closer to the bf16 reference than to the same
case computed without the rounding (measured: 2.3 times or more; a model that skipped the rounding, or
rounded the wrong operand, lands nearer the other reference).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402

FORWARD_TOL = 1e-4  # forward values, losses, gradients
PARAM_TOL = 1e-5    # parameters after K optimizer steps
BF16_TOL = {"forward": 4e-3, "loss": 2e-3, "grad": 1.5e-2, "param": 1.5e-3}
BF16_CLOSER = 1.5   # how much closer to the bf16 reference than to the unrounded one
ZERO_ABS_TOL = 1e-6
LOSS_NAMES = ("ce", "pair", "rank")


def error_of(ours, ref):
    """(error, kind): relative L2 error, or the largest |ours| where the reference is exactly zero."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if not np.all(np.isfinite(ours)):
        return float("inf"), "rel"
    ref_norm = np.linalg.norm(ref)
    if ref_norm == 0:
        return (float(np.abs(ours).max()) if ours.size else 0.0), "abs"
    return float(np.linalg.norm(ours - ref) / ref_norm), "rel"


def is_bf16(case):
    return case.cfg["model"].get("dtype", "fp32") == "bf16"


def comparisons(case, ref):
    """(name shown, file stem, selector applied to both arrays, threshold, kind) for every expected
    output; kind is forward, loss, grad or param."""
    valid = np.arange(case.batch["input_ids"].shape[1])[None, :] < case.batch["lengths"][:, None]
    rows = []
    for stem in ref:
        if stem == "logits":
            rows.append((stem, stem, lambda a: a[valid], FORWARD_TOL, "forward"))
        elif stem == "grad.inputs_embeds":
            rows.append((stem, stem, lambda a: a[valid], FORWARD_TOL, "grad"))
        elif stem == "hidden":
            rows.append((stem, stem, lambda a: a[:, valid], FORWARD_TOL, "forward"))
        elif stem == "loss":
            rows += [(f"loss.{n}", stem, lambda a, i=i: a[i], FORWARD_TOL, "loss") for i, n in enumerate(LOSS_NAMES)]
        elif stem == "losses":
            rows += [(f"losses.{n}", stem, lambda a, i=i: a[:, i], FORWARD_TOL, "loss")
                     for i, n in enumerate(LOSS_NAMES)]
        elif stem.startswith("trained."):
            rows.append((stem, stem, lambda a: a, PARAM_TOL, "param"))
        else:
            rows.append((stem, stem, lambda a: a, FORWARD_TOL, "grad"))
    if is_bf16(case):
        rows = [(name, stem, select, BF16_TOL[kind], kind) for name, stem, select, _, kind in rows]
    return rows


def unrounded_reference(case):
    """The bf16 case's reference without the bf16 rounding (what a model that skipped it would give)."""
    cfg = case.cfg["model"]
    cfg["dtype"] = "fp32"
    try:
        return reference.run_reference(case)
    finally:
        cfg["dtype"] = "bf16"


def closer_to_bf16(name, select, ours, ref, plain):
    """1 failure when a bf16 case's tensor is not clearly nearer its reference than the unrounded one."""
    err, _ = error_of(select(ours), select(ref))
    err_plain, _ = error_of(select(ours), select(plain))
    if err_plain == 0 or err * BF16_CLOSER <= err_plain:
        return 0
    print(f"FAIL  {name:34s} err {err:.2e} vs bf16 reference, {err_plain:.2e} vs unrounded: not {BF16_CLOSER}x closer")
    return 1


def compare(case, ref, ours_dir):
    """Print one line per comparison; return the number of failures."""
    failures = 0
    plain = unrounded_reference(case) if is_bf16(case) else None
    for name, stem, select, tol, what in comparisons(case, ref):
        path = ours_dir / f"{stem}.npy"
        if not path.is_file():
            print(f"FAIL  {name:34s} missing: {path}")
            failures += 1
            continue
        try:
            ours = np.load(path)
        except (OSError, ValueError) as e:
            print(f"FAIL  {name:34s} unreadable: {e}")
            failures += 1
            continue
        if ours.shape != ref[stem].shape:
            print(f"FAIL  {name:34s} shape {ours.shape}, reference {ref[stem].shape}")
            failures += 1
            continue
        err, kind = error_of(select(ours), select(ref[stem]))
        limit = tol if kind == "rel" else ZERO_ABS_TOL
        ok = err <= limit
        failures += not ok
        note = "" if kind == "rel" else "  (reference is exactly zero)"
        print(f"{'ok  ' if ok else 'FAIL'}  {name:34s} {kind} err {err:.2e}  threshold {limit:.0e}{note}")
        if plain is not None and what != "loss":
            failures += closer_to_bf16(name, select, ours, ref[stem], plain[stem])
    return failures


def unexpected_gradients(case, ours_dir):
    """grad.* files for parameters that the case freezes: frozen weights must get no gradient."""
    trainable = set(reference.trainable_names(case.cfg))
    extra = [p.stem for p in sorted(ours_dir.glob("grad.*.npy"))
             if p.stem != "grad.inputs_embeds" and p.stem[len("grad."):] not in trainable]
    for stem in extra:
        print(f"FAIL  {stem:34s} written, but {stem[len('grad.'):]} is frozen in {case.cfg['train']['trainable']}")
    return len(extra)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case_dir")
    parser.add_argument("--ours", help="folder with the C driver's outputs (default CASE_DIR/out)")
    args = parser.parse_args(argv)
    reference.torch.set_num_threads(1)
    case = reference.Case(args.case_dir)
    ours_dir = Path(args.ours) if args.ours else case.dir / "out"
    ref = reference.run_reference(case)
    failures = compare(case, ref, ours_dir) + unexpected_gradients(case, ours_dir)
    cfg = case.cfg
    print(f"compare {case.dir}: {'FAILED' if failures else 'passed'} ({failures} failures; "
          f"trainable {cfg['train']['trainable']}, mode {cfg['tga']['mode']}, K {case.steps_to_run})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
