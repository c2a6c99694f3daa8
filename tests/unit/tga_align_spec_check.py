#!/usr/bin/python3
"""Evaluates the design oracle (shared/design/tga_loss_spec.py, torch) on pooled vectors written by
tests/unit/test_tga_align.c, so the C alignment loss is compared with torch's own cosine and
autograd (including torch 1.13's treatment of norms below eps).

Input file (whitespace-separated numbers):
  B D s eps
  B lines "use_pair use_rank"
  B lines of v (D values), then B lines of r, then B lines of c
Output: pair, rank, then d(pair + rank)/dv as B*D numbers, then d(pair + rank)/dr as B*D numbers.

Pooling is made the identity: sample b's hidden states are two rows, v_b (its one-row image span)
and r_b (its one-row retrieved-text span, or an empty span without rank); the caption target is c.
One layer and n_samples = B, so the spec's weights are pair_weight*(1-s)**pair_pow / B (and the
same for rank), which the C test passes as w_pair / w_rank.

Exit status 77 means the oracle cannot run here (no torch, or no design folder); the C test then
reports the comparison as skipped. The design folder is $TGA_DESIGN_DIR, else
<source dir>/../shared/design.
"""
import os
import pathlib
import sys

UNAVAILABLE = 77


def load_spec():
    source_dir = pathlib.Path(__file__).resolve().parents[2]
    design_dir = os.environ.get("TGA_DESIGN_DIR", str(source_dir.parent / "shared" / "design"))
    if not os.path.isfile(os.path.join(design_dir, "tga_loss_spec.py")):
        print(f"tga_loss_spec.py not found in {design_dir} (set TGA_DESIGN_DIR)", file=sys.stderr)
        sys.exit(UNAVAILABLE)
    sys.path.insert(0, design_dir)
    try:
        import tga_loss_spec
    except ImportError as err:
        print(f"cannot import the spec: {err}", file=sys.stderr)
        sys.exit(UNAVAILABLE)
    return tga_loss_spec


def read_inputs(path):
    with open(path) as f:
        words = f.read().split()
    batch, dim = int(words[0]), int(words[1])
    s, eps = float(words[2]), float(words[3])
    flags = [(int(words[4 + 2 * b]), int(words[5 + 2 * b])) for b in range(batch)]
    values = [float(w) for w in words[4 + 2 * batch:]]
    if len(values) != 3 * batch * dim:
        raise ValueError(f"expected {3 * batch * dim} vector values, got {len(values)}")
    return batch, dim, s, eps, flags, values


def main():
    spec = load_spec()
    import torch

    batch, dim, s, eps, flags, values = read_inputs(sys.argv[1])
    v, r, c = torch.tensor(values, dtype=torch.float64).reshape(3, batch, dim)
    hs_img = torch.stack([v, r], dim=1).unsqueeze(0).requires_grad_(True)  # [1, B, 2, D]
    img_spans = [[(0, 1)] for _ in range(batch)]
    ret_spans = [(1, 1) if use_rank else (0, 0) for (_, use_rank) in flags]
    tox = [not use_pair for (use_pair, _) in flags]
    pair, rank = spec.tga_alignment_loss(hs_img, img_spans, ret_spans, c.unsqueeze(0), tox, s, eps=eps)
    (pair + rank).backward()
    grad = hs_img.grad[0]
    print(f"{pair.item():.17g} {rank.item():.17g}")
    for which in (0, 1):
        for b in range(batch):
            print(" ".join(f"{x:.17g}" for x in grad[b, which].tolist()))


if __name__ == "__main__":
    main()
