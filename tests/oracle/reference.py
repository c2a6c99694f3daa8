#!/usr/bin/python3
"""PyTorch reference of the whole tga model, loss and optimizer step: the oracle for the C code.

Written by hand with HF LlamaForCausalLM / LLaVA semantics (transformers is not a dependency) and run
in float64. It reads a case directory written by make_case.py (config.yaml, param.*.npy, the batch)
and produces the values the C driver must write to DIR/out/ (see README.md for the contract):

  logits [B,T,V], hidden [L+1,B,T,D], loss [3] = (ce, pair, rank)   at the initial weights, s = 0
  grad.<param> (trainable ones), grad.inputs_embeds [B,T,D]          same step, before clipping
  trained.<param> (all), losses [K,3]                                 after K AdamW steps

Usage:
  reference.py CASE_DIR --out OUT_DIR [--dtype float32|float64]   write the reference outputs
  reference.py --self-test                                         check the oracle itself

Writing float32 outputs of the float32 reference into CASE_DIR/out and running compare.py on them is
a calibration: it shows the thresholds are reachable by float32 arithmetic (README.md).
"""
import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGE_TOKEN = -200
IGNORE_INDEX = -100
BATCH_INT_FILES = ["input_ids", "labels", "lengths", "image_spans", "ret_spans", "tox", "cap_ids", "cap_lengths",
                   "cap_spans", "steps_to_run"]


def load_loss_spec():
    """tga_loss_spec.py from the design folder: the alignment terms come from it, not from a copy."""
    design = Path(os.environ.get("TGA_DESIGN_DIR", REPO.parent / "shared" / "design"))
    path = design / "tga_loss_spec.py"
    if not path.is_file():
        sys.exit(f"reference.py: {path} not found; set TGA_DESIGN_DIR to the folder holding tga_loss_spec.py")
    spec = importlib.util.spec_from_file_location("tga_loss_spec", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOSS_SPEC = load_loss_spec()


# ---- the case ------------------------------------------------------------------------------------

def param_shapes(cfg):
    """Every parameter of the model, in the contract's order, with its shape."""
    m, proj = cfg["model"], cfg["projector"]
    dim, hd, ffn, vocab = m["dim"], m["head_dim"], m["ffn_dim"], m["vocab_size"]
    q_dim, kv_dim = m["n_heads"] * hd, m["n_kv_heads"] * hd
    shapes = {"tok_embeddings": (vocab, dim)}
    for i in range(m["n_layers"]):
        p = f"layers.{i}."
        shapes.update({p + "attn_norm": (dim,), p + "wq": (q_dim, dim), p + "wk": (kv_dim, dim),
                       p + "wv": (kv_dim, dim), p + "wo": (dim, q_dim), p + "ffn_norm": (dim,),
                       p + "w_gate": (ffn, dim), p + "w_up": (ffn, dim), p + "w_down": (dim, ffn)})
    shapes["final_norm"] = (dim,)
    if not m["tie_embeddings"]:
        shapes["lm_head"] = (vocab, dim)
    shapes["projector.0.weight"] = (dim, proj["vision_dim"])
    shapes["projector.0.bias"] = (dim,)
    if proj["type"] == "mlp2x_gelu":
        shapes["projector.2.weight"] = (dim, dim)
        shapes["projector.2.bias"] = (dim,)
    elif proj["type"] != "linear":
        raise ValueError(f"projector.type must be mlp2x_gelu or linear, not {proj['type']!r}")
    return shapes


def trainable_names(cfg):
    """lm: the LLM; stage1: the projector (LLM frozen); stage2: both."""
    names = list(param_shapes(cfg))
    projector = [n for n in names if n.startswith("projector.")]
    llm = [n for n in names if not n.startswith("projector.")]
    sets = {"lm": llm, "stage1": projector, "stage2": projector + llm}
    trainable = cfg["train"]["trainable"]
    if trainable not in sets:
        raise ValueError(f"train.trainable must be lm, stage1 or stage2, not {trainable!r}")
    return sets[trainable]


class Case:
    """A case directory: config, float32 parameters and the batch, checked for consistency."""

    def __init__(self, case_dir):
        self.dir = Path(case_dir)
        with open(self.dir / "config.yaml") as f:
            self.cfg = yaml.safe_load(f)
        shapes = param_shapes(self.cfg)
        self.params = {}
        for name, shape in shapes.items():
            a = np.load(self.dir / f"param.{name}.npy")
            if a.dtype != np.float32 or a.shape != shape:
                raise ValueError(f"param.{name}.npy: {a.dtype} {a.shape}, expected float32 {shape}")
            self.params[name] = a
        self.batch = {name: np.load(self.dir / f"{name}.npy") for name in BATCH_INT_FILES}
        for name, a in self.batch.items():
            if a.dtype != np.int32:
                raise ValueError(f"{name}.npy: {a.dtype}, expected int32")
        self.batch["image_features"] = np.load(self.dir / "image_features.npy")
        self.check_batch()

    @property
    def steps_to_run(self):
        return int(self.batch["steps_to_run"][0])

    def image_spans_of(self, b):
        return [(int(s), int(n)) for (sample, s, n) in self.batch["image_spans"] if sample == b]

    def check_batch(self):
        bt = self.batch
        ids, lengths = bt["input_ids"], bt["lengths"]
        n_img, patches, vision_dim = bt["image_features"].shape
        if vision_dim != self.cfg["projector"]["vision_dim"] or bt["image_spans"].shape != (n_img, 3):
            raise ValueError("image_features / image_spans shapes disagree with each other or the config")
        expected = np.zeros(ids.shape, bool)
        for sample, start, length in bt["image_spans"]:
            if length != patches or start + length > lengths[sample]:
                raise ValueError(f"image span ({sample}, {start}, {length}) is outside the sample or not P long")
            expected[sample, start:start + length] = True
        if not np.array_equal(ids == IMAGE_TOKEN, expected):
            raise ValueError("input_ids hold -200 exactly at the image spans and nowhere else")
        for b, (start, length) in enumerate(bt["cap_spans"]):
            if length < 1 or start + length > bt["cap_lengths"][b]:
                raise ValueError(f"caption span of sample {b} is empty or outside the caption")
        if (self.batch["labels"][:, 1:] != IGNORE_INDEX).sum() == 0:
            raise ValueError("the batch has no supervised target")


# ---- the model -----------------------------------------------------------------------------------

# ---- model.dtype bf16 --------------------------------------------------------------------------------
# The C model then stores weight matrices in bf16 and every matrix product rounds both operands to bf16
# and accumulates in fp32 (kernels/ops.h); the backward products round the incoming gradient too and
# send the gradient straight through the rounding to the fp32 master; the MLP's gate and up are kept
# in bf16 (kept()). Here the same in float64.

def bf16(t):
    """t rounded to the nearest bfloat16 (ties to even), kept in t's dtype."""
    return t.to(torch.bfloat16).to(t.dtype)


class Bf16Linear(torch.autograd.Function):
    """x @ w.T on bf16-rounded operands; gradients from the bf16-rounded output gradient."""

    @staticmethod
    def forward(ctx, x, w):
        xr, wr = bf16(x), bf16(w)
        ctx.save_for_backward(xr, wr)
        return xr @ wr.T

    @staticmethod
    def backward(ctx, grad):
        xr, wr = ctx.saved_tensors
        g = bf16(grad)
        return g @ wr, g.reshape(-1, g.shape[-1]).T @ xr.reshape(-1, xr.shape[-1])


BF16_WEIGHTS = False  # set from the case's model.dtype by run_reference


def linear(x, w):
    """x @ w.T as the C model computes it under the case's model.dtype."""
    return Bf16Linear.apply(x, w) if BF16_WEIGHTS else x @ w.T


def kept(t):
    """An activation the C model keeps for the backward in bf16 under model.dtype bf16 (the MLP's gate
    and up, kernels/ops.h swiglu_forward_bf16): the rounded value forward, the gradient straight through."""
    return t + (bf16(t) - t).detach() if BF16_WEIGHTS else t


def lookup(table, ids):
    """Embedding rows; in bf16 the rows are the table rounded, the gradient goes to the fp32 table."""
    if BF16_WEIGHTS:
        table = table + (bf16(table) - table).detach()
    return table[ids]


def rms_norm(x, weight, eps):
    """HF LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) * w."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_tables(seq_len, head_dim, theta, dtype):
    """cos/sin [T, hd] exactly as HF LlamaRotaryEmbedding builds them: float32 throughout, then cast."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    positions = torch.arange(seq_len, dtype=inv_freq.dtype)
    freqs = torch.outer(positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention_context(h, p, m, lengths, cos, sin):
    """Per-head attention output before Wo: [B,T,H*hd]. Causal and key-padding (j >= length) masks."""
    batch, seq, _ = h.shape
    n_heads, n_kv, hd = m["n_heads"], m["n_kv_heads"], m["head_dim"]
    q = linear(h, p["wq"]).view(batch, seq, n_heads, hd).transpose(1, 2)
    k = linear(h, p["wk"]).view(batch, seq, n_kv, hd).transpose(1, 2)
    v = linear(h, p["wv"]).view(batch, seq, n_kv, hd).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    # GQA: query head i reads kv head i // (H / KVH), as HF repeat_kv.
    k = k.repeat_interleave(n_heads // n_kv, dim=1)
    v = v.repeat_interleave(n_heads // n_kv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    idx = torch.arange(seq)
    allowed = (idx[None, :] <= idx[:, None])[None] & (idx[None, None, :] < lengths[:, None, None])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, n_heads * hd)


def layer_params(params, i):
    prefix = f"layers.{i}."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def decoder(params, m, inputs_embeds, lengths):
    """Returns (hs, logits, x_last): hs[0] = embeddings, hs[l] = residual after layer l (l < L),
    hs[L] = final_norm(residual after layer L) as HF's hidden_states; x_last is that residual."""
    eps = float(m["norm_eps"])
    cos, sin = rope_tables(inputs_embeds.shape[1], m["head_dim"], float(m["rope_theta"]), inputs_embeds.dtype)
    x = inputs_embeds
    hs = [x]
    for i in range(m["n_layers"]):
        p = layer_params(params, i)
        h = rms_norm(x, p["attn_norm"], eps)
        x = x + linear(attention_context(h, p, m, lengths, cos, sin), p["wo"])
        h2 = rms_norm(x, p["ffn_norm"], eps)
        x = x + linear(F.silu(kept(linear(h2, p["w_gate"]))) * kept(linear(h2, p["w_up"])), p["w_down"])
        hs.append(x)
    final = rms_norm(x, params["final_norm"], eps)
    hs[-1] = final
    head = params["tok_embeddings"] if m["tie_embeddings"] else params["lm_head"]
    return hs, linear(final, head), x


def project_images(params, proj_cfg, features):
    """LLaVA projector: mlp2x_gelu = Linear, exact GELU, Linear; linear = one Linear."""
    y = linear(features, params["projector.0.weight"]) + params["projector.0.bias"]
    if proj_cfg["type"] == "mlp2x_gelu":
        y = linear(F.gelu(y), params["projector.2.weight"]) + params["projector.2.bias"]
    return y


def input_embeddings(params, case, dtype):
    """Token embeddings with each image's projected patches written over its span (LLaVA splice)."""
    ids = torch.from_numpy(case.batch["input_ids"].astype(np.int64))
    emb = lookup(params["tok_embeddings"], ids.clamp(min=0))
    spans = case.batch["image_spans"]
    if len(spans):
        features = torch.from_numpy(case.batch["image_features"]).to(dtype)
        projected = project_images(params, case.cfg["projector"], features)
        samples = [int(b) for (b, start, n) in spans for _ in range(n)]
        positions = [int(t) for (_, start, n) in spans for t in range(start, start + n)]
        emb = emb.index_put((torch.tensor(samples), torch.tensor(positions)), projected.reshape(-1, emb.shape[-1]))
    return emb


def cross_entropy(logits, labels):
    """HF causal-LM loss: logits[:, t] predicts labels[:, t+1]; mean over supervised targets."""
    vocab = logits.shape[-1]
    targets = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum()


def caption_target(params, case):
    """No-gradient text-only forward on the captions; mean hidden state of each caption span."""
    m, layers = case.cfg["model"], case.cfg["tga"]["layers"]
    with torch.no_grad():
        ids = torch.from_numpy(case.batch["cap_ids"].astype(np.int64))
        lengths = torch.from_numpy(case.batch["cap_lengths"].astype(np.int64))
        hs, _, _ = decoder(params, m, lookup(params["tok_embeddings"], ids), lengths)
        spans = [(int(s), int(n)) for s, n in case.batch["cap_spans"]]
        return LOSS_SPEC.pooled_caption_target(torch.stack([hs[l] for l in layers]), spans)


def alignment_terms(hs, case, cap_target, s, mode):
    """Pair and rank terms of tga_loss_spec.py at the configured layers; zeros in mode off."""
    if mode == "off":
        zero = hs[0].new_zeros(())
        return zero, zero
    t, bt = case.cfg["tga"], case.batch
    batch = bt["input_ids"].shape[0]
    return LOSS_SPEC.tga_alignment_loss(
        torch.stack([hs[l] for l in t["layers"]]),
        [case.image_spans_of(b) for b in range(batch)],
        [(int(start), int(n)) for start, n in bt["ret_spans"]],
        cap_target, [bool(x) for x in bt["tox"]], s,
        pair_weight=float(t["pair_weight"]), rank_weight=float(t["rank_weight"]),
        pair_pow=float(t["pair_decay_pow"]), rank_pow=float(t["rank_decay_pow"]),
        mode=mode, eps=float(t["cos_eps"]), n_samples=batch)


def loss_from_embeddings(params, case, inputs_embeds, s, cap_target):
    """Decoder and loss terms from given input embeddings: (hs, logits, ce, pair, rank)."""
    lengths = torch.from_numpy(case.batch["lengths"].astype(np.int64))
    hs, logits, _ = decoder(params, case.cfg["model"], inputs_embeds, lengths)
    labels = torch.from_numpy(case.batch["labels"].astype(np.int64))
    ce = cross_entropy(logits, labels)
    pair, rank = alignment_terms(hs, case, cap_target, s, case.cfg["tga"]["mode"])
    return hs, logits, ce, pair, rank


def forward_loss(params, case, s, cap_target, dtype):
    """One forward: (inputs_embeds with retained grad, hs, logits, ce, pair, rank)."""
    inputs_embeds = input_embeddings(params, case, dtype)
    if not inputs_embeds.requires_grad:
        inputs_embeds.requires_grad_(True)
    inputs_embeds.retain_grad()
    return (inputs_embeds,) + loss_from_embeddings(params, case, inputs_embeds, s, cap_target)


# ---- optimizer -------------------------------------------------------------------------------------

def learning_rate(step, train):
    """HF get_cosine_schedule_with_warmup (num_cycles 0.5) times lr; `constant` keeps lr."""
    lr = float(train["lr"])
    if train["schedule"] == "constant":
        return lr
    if train["schedule"] != "cosine":
        raise ValueError(f"train.schedule must be cosine or constant, not {train['schedule']!r}")
    total = int(train["steps"])
    warmup = math.ceil(float(train["warmup_ratio"]) * total)
    if step < warmup:
        return lr * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_params(case, dtype):
    params = {n: torch.tensor(a, dtype=dtype) for n, a in case.params.items()}
    for name in trainable_names(case.cfg):
        params[name].requires_grad_(True)
    return params


def run_reference(case, dtype=torch.float64):
    """All outputs of the contract as float64 numpy arrays, keyed by their file name without .npy."""
    global BF16_WEIGHTS
    BF16_WEIGHTS = case.cfg["model"].get("dtype", "fp32") == "bf16"
    params = make_params(case, dtype)
    names = trainable_names(case.cfg)
    trainable = [params[n] for n in names]
    train, mode = case.cfg["train"], case.cfg["tga"]["mode"]
    steps = case.steps_to_run
    optimizer = torch.optim.AdamW(trainable, lr=float(train["lr"]), betas=(float(train["beta1"]),
                                  float(train["beta2"])), eps=float(train["adam_eps"]),
                                  weight_decay=float(train["weight_decay"]))
    out, losses = {}, []
    for step in range(max(steps, 1)):
        s = step / int(train["steps"])
        for p in trainable:
            p.grad = None
        cap_target = caption_target(params, case) if mode != "off" else None
        inputs_embeds, hs, logits, ce, pair, rank = forward_loss(params, case, s, cap_target, dtype)
        (ce + pair + rank).backward()
        losses.append([ce.item(), pair.item(), rank.item()])
        if step == 0:
            out["logits"] = logits.detach().double().numpy()
            out["hidden"] = torch.stack(hs).detach().double().numpy()
            out["loss"] = np.array(losses[0])
            for n, p in zip(names, trainable):
                out[f"grad.{n}"] = p.grad.double().numpy().copy()
            out["grad.inputs_embeds"] = inputs_embeds.grad.double().numpy()
        if steps == 0:
            break
        if float(train["grad_clip"]) > 0:
            torch.nn.utils.clip_grad_norm_(trainable, float(train["grad_clip"]))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, train)
        optimizer.step()
    if steps > 0:
        for n, p in params.items():
            # a frozen bf16 matrix exists only as its bf16 copy
            stored = bf16(p) if BF16_WEIGHTS and p.dim() == 2 and n not in names else p
            out[f"trained.{n}"] = stored.detach().double().numpy()
        out["losses"] = np.array(losses)
    return out


def write_outputs(outputs, out_dir):
    """Write outputs the way the C driver does: float32 tensors, float64 losses."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, a in outputs.items():
        dtype = np.float64 if name in ("loss", "losses") else np.float32
        np.save(out_dir / f"{name}.npy", a.astype(dtype))


# ---- self-test: the oracle against independently written code ------------------------------------

# NumPy's float32 pow/cos differ from torch's by an ulp, which moves RoPE by up to ~1e-6 relative.
INDEPENDENT_TOL = 1e-6


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def check(cond, message):
    if not cond:
        raise AssertionError(message)


def numpy_params(case):
    return {k: v.astype(np.float64) for k, v in case.params.items()}


def numpy_embeddings(case, p):
    """The LLaVA splice from the raw arrays: token rows, then each image's projected patches."""
    ids = case.batch["input_ids"]
    emb = p["tok_embeddings"][np.where(ids >= 0, ids, 0)]
    erf = np.vectorize(math.erf)
    for features, (b, start, n) in zip(case.batch["image_features"].astype(np.float64), case.batch["image_spans"]):
        y = features @ p["projector.0.weight"].T + p["projector.0.bias"]
        if case.cfg["projector"]["type"] == "mlp2x_gelu":
            y = 0.5 * y * (1 + erf(y / math.sqrt(2))) @ p["projector.2.weight"].T + p["projector.2.bias"]
        emb[b, start:start + n] = y
    return emb


def numpy_forward(p, m, embeds, lengths):
    """Float64 NumPy forward with a loop over heads; returns (hs, logits, residual after the last layer)."""
    eps, hd, n_heads, n_kv = float(m["norm_eps"]), m["head_dim"], m["n_heads"], m["n_kv_heads"]
    batch, seq, _ = embeds.shape

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    inv_freq = 1.0 / (np.float32(m["rope_theta"]) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)))
    angles = np.arange(seq, dtype=np.float32)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angles).astype(np.float64), np.sin(angles).astype(np.float64)

    def rope(x):  # pairs (i, i + hd/2) rotate by the angle t * inv_freq[i]
        a, b = x[:, :hd // 2], x[:, hd // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1)

    x, hs = embeds.copy(), [embeds.copy()]
    j = np.arange(seq)
    for i in range(m["n_layers"]):
        w = {k[len(f"layers.{i}."):]: v for k, v in p.items() if k.startswith(f"layers.{i}.")}
        h = norm(x, w["attn_norm"])
        context = np.zeros((batch, seq, n_heads * hd))
        for b in range(batch):
            for head in range(n_heads):
                kv = head // (n_heads // n_kv)
                q = rope(h[b] @ w["wq"][head * hd:(head + 1) * hd].T)
                k = rope(h[b] @ w["wk"][kv * hd:(kv + 1) * hd].T)
                v = h[b] @ w["wv"][kv * hd:(kv + 1) * hd].T
                scores = q @ k.T / math.sqrt(hd)
                scores[(j[None, :] > j[:, None]) | (j[None, :] >= lengths[b])] = -np.inf
                weights = np.exp(scores - scores.max(1, keepdims=True))
                context[b, :, head * hd:(head + 1) * hd] = weights / weights.sum(1, keepdims=True) @ v
        x = x + context @ w["wo"].T
        h2 = norm(x, w["ffn_norm"])
        gate = h2 @ w["w_gate"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h2 @ w["w_up"].T)) @ w["w_down"].T
        hs.append(x.copy())
    hs[-1] = norm(x, p["final_norm"])
    return hs, hs[-1] @ p["tok_embeddings" if m["tie_embeddings"] else "lm_head"].T, x


def numpy_losses(case, p, hs, logits, s):
    """CE by a loop over targets; pair and rank by loops over layers and samples (TGA-METHOD.md §3)."""
    bt, t, m = case.batch, case.cfg["tga"], case.cfg["model"]
    labels = bt["labels"]
    terms = [np.logaddexp.reduce(logits[b, i]) - logits[b, i, labels[b, i + 1]]
             for b in range(labels.shape[0]) for i in range(labels.shape[1] - 1) if labels[b, i + 1] != IGNORE_INDEX]
    ce = sum(terms) / len(terms)
    cap_hs, _, _ = numpy_forward(p, m, p["tok_embeddings"][bt["cap_ids"]], bt["cap_lengths"])
    eps = float(t["cos_eps"])

    def cos(a, b):
        return a @ b / (max(np.linalg.norm(a), eps) * max(np.linalg.norm(b), eps))

    batch, n_layers = labels.shape[0], len(t["layers"])
    pair = rank = 0.0
    for l in t["layers"]:
        for b in range(batch):
            rows = [hs[l][b, i] for (sample, start, n) in bt["image_spans"] if sample == b
                    for i in range(start, start + n)]
            if bt["tox"][b] or not rows:
                continue
            start, n = bt["cap_spans"][b]
            c = cap_hs[l][b, start:start + n].mean(0)
            cos_vc = cos(np.mean(rows, 0), c)
            pair += float(t["pair_weight"]) / n_layers * (1 - s) ** float(t["pair_decay_pow"]) * math.exp(-cos_vc)
            start, n = bt["ret_spans"][b]
            if n:
                cos_rc = cos(hs[l][b, start:start + n].mean(0), c)
                rank += (float(t["rank_weight"]) / n_layers * (1 - s) ** float(t["rank_decay_pow"])
                         * math.exp(cos_rc - cos_vc))
    return ce, pair / batch, rank / batch


def naive_head_attention(h, p, m, length, head):
    """Attention of one head of one sample with scalar loops, RoPE by its pairwise rotation."""
    hd, seq = m["head_dim"], h.shape[0]
    kv = head // (m["n_heads"] // m["n_kv_heads"])
    theta = np.float32(m["rope_theta"])

    def rotated(vec, t):
        out = list(vec)
        for i in range(hd // 2):
            angle = np.float32(t) * np.float32(1.0 / theta ** (np.float32(2 * i) / np.float32(hd)))
            c, s = float(np.cos(angle)), float(np.sin(angle))
            out[i], out[i + hd // 2] = vec[i] * c - vec[i + hd // 2] * s, vec[i + hd // 2] * c + vec[i] * s
        return out

    def project(w, first_row, x):
        return [sum(w[first_row + i][c] * x[c] for c in range(len(x))) for i in range(hd)]

    wq, wk, wv = (p[k].tolist() for k in ("wq", "wk", "wv"))
    rows = [list(map(float, h[t])) for t in range(seq)]
    q = [rotated(project(wq, head * hd, rows[t]), t) for t in range(seq)]
    k = [rotated(project(wk, kv * hd, rows[t]), t) for t in range(seq)]
    v = [project(wv, kv * hd, rows[t]) for t in range(seq)]
    out = []
    for t in range(seq):
        keys = [j for j in range(seq) if j <= t and j < length]
        scores = [sum(q[t][i] * k[j][i] for i in range(hd)) / math.sqrt(hd) for j in keys]
        weights = [math.exp(x - max(scores)) for x in scores]
        out.append([sum(w / sum(weights) * v[j][i] for w, j in zip(weights, keys)) for i in range(hd)])
    return np.array(out)


def self_test_forward(case, s=0.35):
    """Embeddings, hidden states, logits and all three loss terms against the NumPy code."""
    params = make_params(case, torch.float64)
    m = case.cfg["model"]
    embeds, hs, logits, ce, pair, rank = forward_loss(params, case, s, caption_target(params, case), torch.float64)
    hs = [h.detach().numpy() for h in hs]
    p = numpy_params(case)
    np_embeds = numpy_embeddings(case, p)
    np_hs, np_logits, np_x = numpy_forward(p, m, np_embeds, case.batch["lengths"])
    check(rel(embeds.detach(), np_embeds) < 1e-12, "the image splice differs from the NumPy splice")
    for l, (a, b) in enumerate(zip(hs, np_hs)):
        check(rel(a, b) < INDEPENDENT_TOL, f"hs[{l}] differs from the NumPy forward: {rel(a, b):.2e}")
    check(rel(logits.detach(), np_logits) < INDEPENDENT_TOL, "logits differ from the NumPy forward")
    normed = np_x / np.sqrt((np_x ** 2).mean(-1, keepdims=True) + float(m["norm_eps"])) * p["final_norm"]
    check(rel(hs[-1], normed) < INDEPENDENT_TOL, "hs[L] must be final_norm(residual after the last layer)")
    check(rel(hs[-2], normed) > 1e-3, "hs[L-1] must be a raw residual")
    for name, ours, want in zip(("ce", "pair", "rank"), (ce, pair, rank),
                                numpy_losses(case, p, np_hs, np_logits, s)):
        check(abs(ours.item() - want) <= INDEPENDENT_TOL * abs(want), f"{name}: {ours.item()} vs NumPy {want}")

    layer0 = layer_params(params, 0)
    lengths = torch.from_numpy(case.batch["lengths"].astype(np.int64))
    cos, sin = rope_tables(embeds.shape[1], m["head_dim"], float(m["rope_theta"]), torch.float64)
    h = rms_norm(embeds.detach(), layer0["attn_norm"].detach(), float(m["norm_eps"]))
    context = attention_context(h, {k: v.detach() for k, v in layer0.items()}, m, lengths, cos, sin)
    b, head, hd = int(np.argmin(case.batch["lengths"])), m["n_heads"] - 1, m["head_dim"]
    naive = naive_head_attention(h[b].numpy(), {k: v.detach().numpy() for k, v in layer0.items()}, m,
                                 int(case.batch["lengths"][b]), head)
    ours = context[b, :, head * hd:(head + 1) * hd].numpy()
    check(rel(ours, naive) < INDEPENDENT_TOL, f"attention head {head} differs from scalar loops: {rel(ours, naive)}")
    return pair.item() > 0


def central_difference(loss, tensor, index, step=1e-6):
    with torch.no_grad():
        saved = tensor[index].item()
        tensor[index] = saved + step
        up = loss()
        tensor[index] = saved - step
        down = loss()
        tensor[index] = saved
    return (up - down) / (2 * step)


def self_test_gradients(case, s=0.35):
    """Autograd against central differences for parameters and input embeddings, the caption target
    held fixed (it is computed without gradient)."""
    params = make_params(case, torch.float64)
    cap_target = caption_target(params, case)
    inputs_embeds, _, _, ce, pair, rank = forward_loss(params, case, s, cap_target, torch.float64)
    (ce + pair + rank).backward()
    embeds = inputs_embeds.detach().clone()

    def loss_of_params():
        _, _, _, c, p, r = forward_loss(params, case, s, cap_target, torch.float64)
        return (c + p + r).item()

    def loss_of_embeds():
        _, _, c, p, r = loss_from_embeddings(params, case, embeds, s, cap_target)
        return (c + p + r).item()

    rng = np.random.default_rng(1)
    probes = []
    for name in trainable_names(case.cfg):
        if name.startswith(("projector.", "tok_embeddings", "lm_head", "final_norm")) or name.endswith(
                ("wq", "wk", "w_down", "attn_norm")):
            for _ in range(2):
                index = tuple(int(rng.integers(d)) for d in params[name].shape)
                if name == "tok_embeddings":  # a row that the batch uses
                    index = (int(case.batch["input_ids"][0, 1]),) + index[1:]
                probes.append((f"{name}{list(index)}", params[name], index, params[name].grad, loss_of_params))
    for (b, t) in embedding_probe_positions(case):
        index = (b, t, int(rng.integers(embeds.shape[-1])))
        probes.append((f"inputs_embeds{list(index)}", embeds, index, inputs_embeds.grad, loss_of_embeds))
    worst = 0.0
    for label, tensor, index, grad, loss in probes:
        fd, analytic = central_difference(loss, tensor, index), grad[index].item()
        err = abs(fd - analytic) / max(abs(fd), abs(analytic), 1e-6)
        worst = max(worst, err)
        check(err < 1e-5, f"d loss / d {label}: autograd {analytic:.10g}, central difference {fd:.10g}")
    return worst, len(probes)


def embedding_probe_positions(case):
    """A prompt token, and an image patch and a retrieved-text position of every aligned image."""
    bt = case.batch
    positions = [(0, 1)]
    for sample, start, _ in bt["image_spans"]:
        if not bt["tox"][sample]:
            positions.append((int(sample), int(start)))
            ret_start, ret_len = bt["ret_spans"][sample]
            if ret_len:
                positions.append((int(sample), int(ret_start + ret_len - 1)))
    return positions


def self_test_modes(case_dir):
    """released = intended's values with off's (CE-only) gradients; intended's gradients differ
    from them by far more than compare.py's threshold."""
    import compare
    results = {}
    for mode in ("intended", "released", "off"):
        case = Case(case_dir)
        case.cfg["tga"]["mode"] = mode
        case.batch["steps_to_run"] = np.array([0], np.int32)
        results[mode] = run_reference(case)
    intended, released, off = results["intended"], results["released"], results["off"]
    check(np.array_equal(intended["loss"], released["loss"]), "released must have intended's loss values")
    check(off["loss"][1] == 0 and off["loss"][2] == 0, "mode off has no alignment terms")
    check(intended["loss"][1] > 0 and intended["loss"][2] > 0, "the case must exercise both alignment terms")
    grads = [n for n in intended if n.startswith("grad.")]
    for name in grads:
        check(np.array_equal(released[name], off[name]), f"released {name} must equal the CE-only gradient")
    gap = max(rel(off[n], intended[n]) for n in grads)
    check(gap > 100 * compare.FORWARD_TOL, f"the alignment gradient is too small to test ({gap:.1e})")
    return gap


def self_test_optimizer(case):
    """One clipped AdamW step against the update written out by hand."""
    case.batch["steps_to_run"] = np.array([1], np.int32)
    train = case.cfg["train"]
    train.update(schedule="cosine", warmup_ratio=0.0, grad_clip=1e-3, weight_decay=0.1)
    out = run_reference(case)
    names = trainable_names(case.cfg)
    grads = [out[f"grad.{n}"] for n in names]
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
    scale = 1e-3 / (norm + 1e-6)
    check(scale < 1, "the optimizer check needs an active clip")
    lr, b1, b2, eps = (float(train[k]) for k in ("lr", "beta1", "beta2", "adam_eps"))
    for n, g in zip(names, grads):
        g = g * scale
        m_hat, v_hat = (1 - b1) * g / (1 - b1), (1 - b2) * g * g / (1 - b2)
        want = case.params[n].astype(np.float64) * (1 - lr * 0.1) - lr * m_hat / (np.sqrt(v_hat) + eps)
        check(rel(out[f"trained.{n}"], want) < 1e-12, f"AdamW step of {n} differs from the written-out update")


def self_test_steps(case_dir):
    """losses[k] of a run equal the NumPy losses at the weights after k steps and s = k / steps, with
    the caption target from those weights."""
    runs = []
    for steps_to_run in (1, 2):
        case = Case(case_dir)
        case.cfg["train"].update(warmup_ratio=0.0, schedule="cosine")
        case.batch["steps_to_run"] = np.array([steps_to_run], np.int32)
        runs.append(run_reference(case))
    after_one = {n[len("trained."):]: a for n, a in runs[0].items() if n.startswith("trained.")}
    s = 1 / int(case.cfg["train"]["steps"])
    for k, p in ((0, numpy_params(case)), (1, after_one)):
        hs, logits, _ = numpy_forward(p, case.cfg["model"], numpy_embeddings(case, p), case.batch["lengths"])
        want = numpy_losses(case, p, hs, logits, k * s)
        check(rel(runs[1]["losses"][k], want) < INDEPENDENT_TOL, f"losses at step {k} differ from NumPy's")
    check(rel(after_one["projector.0.weight"], case.params["projector.0.weight"]) > 1e-5, "step 0 must move weights")


def self_test_schedule():
    """learning_rate() against HF's _get_cosine_schedule_with_warmup_lr_lambda, transcribed."""
    def hf_lambda(current_step, num_warmup_steps, num_training_steps, num_cycles=0.5):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        progress = float(current_step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))

    for steps, ratio in ((20, 0.1), (20, 0.15), (100, 0.03), (100, 0.07), (7, 0.0), (3, 1.0)):
        warmup = math.ceil(steps * ratio)  # HF TrainingArguments.get_warmup_steps
        train = dict(lr=2e-3, steps=steps, warmup_ratio=ratio, schedule="cosine")
        for k in range(steps + 1):
            want = 2e-3 * hf_lambda(k, warmup, steps)
            check(abs(learning_rate(k, train) - want) <= 1e-18, f"lr at step {k} of {steps} (ratio {ratio})")
    check(math.ceil(100 * 0.07) == 8, "100 * 0.07 is 7.000000000000001 in double: 8 warmup steps, as in HF")


def self_test():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_case
    import tempfile
    cases = [("stage2, GQA 4/2, untied", dict(trainable="stage2", mode="intended", tied=0, n_heads=4, kv_heads=2)),
             ("stage2, tied, KVH 1", dict(trainable="stage2", mode="intended", tied=1, kv_heads=1)),
             ("stage1, linear projector", dict(trainable="stage1", mode="intended", projector="linear")),
             ("lm, MHA", dict(trainable="lm", mode="intended", tied=1, n_heads=2, kv_heads=2))]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, options) in enumerate(cases):
            case_dir = Path(tmp) / f"case{i}"
            make_case.write_case(case_dir, seed=11 + i, steps_to_run=0, **options)
            aligned = self_test_forward(Case(case_dir))
            check(aligned or options["trainable"] == "lm", f"{label}: the case must exercise the alignment terms")
            worst, n_probes = self_test_gradients(Case(case_dir))
            print(f"self-test {label}: forward and losses match NumPy and scalar loops; {n_probes} gradient "
                  f"coordinates match central differences (worst rel {worst:.1e})")
        gap = self_test_modes(Path(tmp) / "case0")
        print(f"self-test modes: released = intended's values with CE-only gradients; the alignment gradient "
              f"moves some gradient by {gap:.1e}")
        self_test_optimizer(Case(Path(tmp) / "case0"))
        self_test_schedule()
        self_test_steps(Path(tmp) / "case0")
        print("self-test optimizer: a clipped AdamW step and the HF cosine schedule match their transcriptions; "
              "the losses of step 1 match NumPy at the updated weights")
    print("reference self-test passed")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case_dir", nargs="?")
    parser.add_argument("--out", help="write the reference outputs here (the C driver's format)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.self_test:
        self_test()
        return 0
    if not args.case_dir or not args.out:
        parser.error("give CASE_DIR and --out, or --self-test")
    outputs = run_reference(Case(args.case_dir), getattr(torch, args.dtype))
    write_outputs(outputs, args.out)
    print(f"reference ({args.dtype}): wrote {len(outputs)} arrays to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
