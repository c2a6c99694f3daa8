#!/usr/bin/python3
"""PyTorch peer of `tga bench step`: the same model, batch and training step, timed the same way.

Run with Debian's torch (`/usr/bin/python3`, torch 1.13, float32). One step is:
  1. the text branch under torch.no_grad(): a text-only forward on the captions with the current
     weights, mean-pooled over each caption span at the tga layers (the alignment targets);
  2. the multimodal forward: projector (mlp2x_gelu) on the image features, spliced into the token
     embeddings at the image spans, the Llama decoder, final RMSNorm;
  3. LM-head cross-entropy over the supervised rows only (gathered first, as tga does);
  4. the intended TGA terms (torch.exp, differentiable) on the image / retrieved-text spans
     mean-pooled at the same layers: pair = w_p * exp(-cos(v, c)), rank = w_r * exp(cos(r, c) - cos(v, c));
  5. backward, clip_grad_norm_, AdamW (cosine schedule with linear warmup, as tga).
stage1 freezes the decoder (requires_grad_(False)) and trains the projector; stage2 trains both.

The op structure mirrors tga's (separate q/k/v projections, separate gate/up), so neither side
gets a fusion the other lacks. Attention is matmul + additive causal/padding mask + softmax:
torch 1.13 has no scaled_dot_product_attention.

The batch layout is that of trainer/cmd_bench.c: per sample [BOS][8 retrieved-text tokens]
[K images x P patches][text], T tokens, the last quarter supervised; captions of T/2 tokens whose
caption span starts after BOS. Prints the same `median_ms ... peak_rss_mb ...` line as tga.
"""
import argparse
import math
import os
import resource
import sys
import time

IMAGE_TOKEN_ID = -200  # LLaVA's IMAGE_TOKEN_INDEX, as trainer/model.h
IGNORE_INDEX = -100
RETRIEVED_TOKENS = 8


# Shape and training settings: (flag, key in a tga config, type, tga's schema default). The
# defaults are tga's so that a key missing from --tga-config means the same on both sides.
SETTINGS = [
    ("stage", "train.trainable", str, "stage1"),
    ("dim", "model.dim", int, 64),
    ("n_layers", "model.n_layers", int, 4),
    ("n_heads", "model.n_heads", int, 4),
    ("n_kv_heads", "model.n_kv_heads", int, 2),
    ("head_dim", "model.head_dim", int, 0),
    ("ffn_dim", "model.ffn_dim", int, 172),
    ("vocab_size", "model.vocab_size", int, 512),
    ("rope_theta", "model.rope_theta", float, 10000.0),
    ("norm_eps", "model.norm_eps", float, 1e-5),
    ("init_std", "model.init_std", float, 0.02),
    ("projector", "projector.type", str, "mlp2x_gelu"),
    ("vision_dim", "projector.vision_dim", int, 32),
    ("image_tokens", "data.image_tokens", int, 16),
    ("seq_len", "data.max_len", int, 256),
    ("batch", "train.micro_batch", int, 4),
    ("seed", "train.seed", int, 1234),
    ("total_steps", "train.steps", int, 100),
    ("lr", "train.lr", float, 1e-3),
    ("warmup_ratio", "train.warmup_ratio", float, 0.03),
    ("schedule", "train.schedule", str, "cosine"),
    ("weight_decay", "train.weight_decay", float, 0.0),
    ("beta1", "train.beta1", float, 0.9),
    ("beta2", "train.beta2", float, 0.999),
    ("adam_eps", "train.adam_eps", float, 1e-8),
    ("grad_clip", "train.grad_clip", float, 1.0),
    ("tga_mode", "tga.mode", str, "intended"),
    ("tga_layers", "tga.layers", str, "1-3"),
    ("pair_weight", "tga.pair_weight", float, 0.25),
    ("rank_weight", "tga.rank_weight", float, 0.1),
    ("pair_decay_pow", "tga.pair_decay_pow", float, 1.0),
    ("rank_decay_pow", "tga.rank_decay_pow", float, 2.0),
    ("cos_eps", "tga.cos_eps", float, 1e-8),
]
# Settings tga accepts that this peer does not implement: the value it requires.
UNSUPPORTED = {"model.tie_embeddings": False, "train.recompute": False}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tga-config", metavar="FILE",
                   help="read the settings below from a tga YAML config; flags given override it")
    for flag, key, kind, default in SETTINGS:
        p.add_argument("--" + flag.replace("_", "-"), type=kind, default=None,
                       help=f"{key} (default {default})")
    p.add_argument("--images", type=int, default=2, help="images per sample (tga bench step --images)")
    p.add_argument("--steps", type=int, default=10, help="measured steps")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = torch's default")
    a = p.parse_args()
    config = read_tga_config(p, a.tga_config) if a.tga_config else {}
    for flag, key, kind, default in SETTINGS:
        if getattr(a, flag) is None:
            setattr(a, flag, to_type(p, key, kind, config.get(key, default)))
    for key, required in UNSUPPORTED.items():
        if key in config and to_type(p, key, bool, config[key]) != required:
            p.error(f"{key}: only {required} is implemented here")
    check_args(p, a)
    return a


def read_tga_config(parser, path):
    """The tga YAML as a flat {"section.key": value} dict."""
    import yaml
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        parser.error(f"--tga-config: {e}")
    return {f"{section}.{key}": value for section, keys in doc.items() if isinstance(keys, dict)
            for key, value in keys.items()}


def to_type(parser, key, kind, value):
    """YAML 1.1 reads `1e-3` as a string and `true` as a bool; tga reads both as numbers/bools."""
    try:
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() == "true"
        return kind(value)
    except (TypeError, ValueError):
        parser.error(f"{key}: cannot read {value!r} as {kind.__name__}")


def check_args(p, a):
    if a.steps < 1 or a.warmup < 0 or a.images < 1:
        p.error("--steps and --images must be >= 1, --warmup >= 0")
    if a.stage not in ("stage1", "stage2"):
        p.error("train.trainable: stage1 or stage2 (lm has no images)")
    if a.projector != "mlp2x_gelu" or a.tga_mode != "intended" or a.schedule not in ("cosine", "constant"):
        p.error("implemented here: projector.type mlp2x_gelu, tga.mode intended, train.schedule cosine|constant")
    if a.n_heads % a.n_kv_heads or a.dim % a.n_heads or a.head_dim not in (0, a.dim // a.n_heads):
        p.error("model: n_heads must divide dim and be a multiple of n_kv_heads; head_dim 0 or dim / n_heads")
    if 1 + RETRIEVED_TOKENS + a.images * a.image_tokens + 4 > a.seq_len:
        p.error("data.max_len is too short for the retrieved text and the images")
    a.tga_layers = parse_layers(p, a.tga_layers, a.n_layers)


def parse_layers(parser, text, n_layers):
    layers = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            layers.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            parser.error(f"--tga-layers: cannot read {text!r}")
    if not layers or min(layers) < 0 or max(layers) > n_layers:
        parser.error(f"--tga-layers must lie in [0, {n_layers}]")
    return sorted(layers)


ARGS = parse_args()
if ARGS.threads > 0:
    # OpenBLAS (torch's BLAS here) reads its thread count from the environment when it loads.
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import torch  # noqa: E402  (after the thread environment is set)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(max_len, head_dim, theta):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x, cos, sin):
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.h, self.kvh, self.hd = a.n_heads, a.n_kv_heads, a.dim // a.n_heads
        self.wq = nn.Linear(a.dim, self.h * self.hd, bias=False)
        self.wk = nn.Linear(a.dim, self.kvh * self.hd, bias=False)
        self.wv = nn.Linear(a.dim, self.kvh * self.hd, bias=False)
        self.wo = nn.Linear(self.h * self.hd, a.dim, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.wk(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        v = self.wv(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = self.h // self.kvh
        # grouped-query heads as HF's repeat_kv: each K/V head serves `group` query heads
        k = k[:, :, None].expand(B, self.kvh, group, T, self.hd).reshape(B, self.h, T, self.hd)
        v = v[:, :, None].expand(B, self.kvh, group, T, self.hd).reshape(B, self.h, T, self.hd)
        scores = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(self.hd)) + mask
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.wo(out.transpose(1, 2).reshape(B, T, self.h * self.hd))


class MLP(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.w_gate = nn.Linear(a.dim, a.ffn_dim, bias=False)
        self.w_up = nn.Linear(a.dim, a.ffn_dim, bias=False)
        self.w_down = nn.Linear(a.ffn_dim, a.dim, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class DecoderLayer(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.attn_norm = RMSNorm(a.dim, a.norm_eps)
        self.attn = Attention(a)
        self.ffn_norm = RMSNorm(a.dim, a.norm_eps)
        self.mlp = MLP(a)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.mlp(self.ffn_norm(x))


class Decoder(nn.Module):
    """Llama decoder; forward returns the HF hidden_states list: [embeddings, after layer 1, ...,
    final-normed output], i.e. the indices tga.layers refers to."""

    def __init__(self, a):
        super().__init__()
        self.tok_embeddings = nn.Embedding(a.vocab_size, a.dim)
        self.layers = nn.ModuleList(DecoderLayer(a) for _ in range(a.n_layers))
        self.final_norm = RMSNorm(a.dim, a.norm_eps)
        self.lm_head = nn.Linear(a.dim, a.vocab_size, bias=False)
        cos, sin = rope_tables(a.seq_len, a.dim // a.n_heads, a.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for name, p in self.named_parameters():
            if "norm" not in name:
                nn.init.normal_(p, 0.0, a.init_std)

    def forward(self, x, lengths):
        T = x.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        mask = causal_padding_mask(lengths, T, x.dtype)
        hidden = [x]
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
            hidden.append(x)
        hidden[-1] = self.final_norm(x)
        return hidden


def causal_padding_mask(lengths, T, dtype):
    """Additive [B, 1, T, T] mask: query t sees keys j <= t with j < lengths[b]."""
    pos = torch.arange(T)
    allowed = (pos[None, :] <= pos[:, None])[None] & (pos[None, None, :] < lengths[:, None, None])
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def make_projector(a):
    # nn.Linear's default init, as tga's projector
    return nn.Sequential(nn.Linear(a.vision_dim, a.dim), nn.GELU(), nn.Linear(a.dim, a.dim))


def make_batch(a):
    """The synthetic batch of trainer/cmd_bench.c (same layout and shapes; values from torch's RNG)."""
    B, T, K, P, R = a.batch, a.seq_len, a.images, a.image_tokens, RETRIEVED_TOKENS
    Tc = max(T // 2, 2)
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(1, a.vocab_size, (B, T), generator=g)
    img_lo, img_hi = 1 + R, 1 + R + K * P
    ids[:, img_lo:img_hi] = IMAGE_TOKEN_ID
    labels = torch.full((B, T), IGNORE_INDEX)
    labels[:, T - T // 4:] = ids[:, T - T // 4:]
    targets = torch.cat((labels[:, 1:], torch.full((B, 1), IGNORE_INDEX)), dim=1)
    sup_b, sup_t = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    img_b, img_t = (ids == IMAGE_TOKEN_ID).nonzero(as_tuple=True)
    cap_ids = torch.roll(ids, -(T // 2), dims=1)[:, :Tc].clone()
    cap_ids[cap_ids < 0] = 3
    return {
        "ids": ids.clamp(min=0),  # image placeholders: any valid row, overwritten by the splice
        "lengths": torch.full((B,), T),
        "features": torch.randn(B * K * P, a.vision_dim, generator=g),
        "img_index": (img_b, img_t),
        "sup_index": (sup_b, sup_t),
        "sup_targets": targets[sup_b, sup_t],
        "img_span": (img_lo, img_hi),
        "ret_span": (1, 1 + R),
        "cap_ids": cap_ids,
        "cap_lengths": torch.full((B,), Tc),
        "cap_span": (1, Tc),
    }


def lr_at(a, step):
    """tga's schedule (trainer/optim.c): constant, or linear warmup from 0 then cosine to 0."""
    if a.schedule == "constant":
        return a.lr
    warmup = math.ceil(a.warmup_ratio * a.total_steps)
    if step < warmup:
        return a.lr * step / max(warmup, 1)
    progress = (step - warmup) / max(a.total_steps - warmup, 1)
    return a.lr * max(0.5 * (1.0 + math.cos(math.pi * progress)), 0.0)


def train_step(a, model, projector, batch, optimizer, params, step, progress):
    layers = a.tga_layers
    with torch.no_grad():
        cap_hidden = model(model.tok_embeddings(batch["cap_ids"]), batch["cap_lengths"])
        lo, hi = batch["cap_span"]
        cap_target = torch.stack([cap_hidden[l][:, lo:hi].mean(1) for l in layers])  # [A, B, D]

    embeds = model.tok_embeddings(batch["ids"])
    embeds = embeds.index_put(batch["img_index"], projector(batch["features"]))
    hidden = model(embeds, batch["lengths"])

    logits = model.lm_head(hidden[-1][batch["sup_index"]])
    ce = F.cross_entropy(logits, batch["sup_targets"])

    (ilo, ihi), (rlo, rhi) = batch["img_span"], batch["ret_span"]
    v = torch.stack([hidden[l][:, ilo:ihi].mean(1) for l in layers])
    r = torch.stack([hidden[l][:, rlo:rhi].mean(1) for l in layers])
    cos_vc = F.cosine_similarity(v, cap_target, dim=-1, eps=a.cos_eps)
    cos_rc = F.cosine_similarity(r, cap_target, dim=-1, eps=a.cos_eps)
    decay = 1.0 - progress
    n_terms = len(layers) * a.batch
    pair = a.pair_weight * decay ** a.pair_decay_pow / n_terms * torch.exp(-cos_vc).sum()
    rank = a.rank_weight * decay ** a.rank_decay_pow / n_terms * torch.exp(cos_rc - cos_vc).sum()

    (ce + pair + rank).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, a.grad_clip if a.grad_clip > 0 else math.inf)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(a, step)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return ce.item(), pair.item(), rank.item(), grad_norm.item()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(a):
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rss_after_import = peak_rss_mb()
    model, projector = Decoder(a), make_projector(a)
    model.requires_grad_(a.stage == "stage2")
    params = [p for m in (model, projector) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.adam_eps,
                                  weight_decay=a.weight_decay)
    batch = make_batch(a)

    times = []
    total = a.warmup + a.steps
    for k in range(total):
        t0 = time.perf_counter()
        losses = train_step(a, model, projector, batch, optimizer, params, k, k / total)
        elapsed_ms = (time.perf_counter() - t0) * 1e3
        if k >= a.warmup:
            times.append(elapsed_ms)
        if k in (0, total - 1):
            print("step %d: ce %.4f pair %.4f rank %.4f grad norm %.4f" % ((k,) + losses))
    times.sort()
    print(f"torch step: torch {torch.__version__}, {torch.get_num_threads()} threads, {a.stage}, "
          f"B={a.batch} T={a.seq_len}, {a.images} images x {a.image_tokens} patches per sample, "
          f"peak RSS after `import torch` {rss_after_import:.1f} MB")
    print("median_ms %.3f min_ms %.3f steps %d peak_rss_mb %.1f"
          % (times[len(times) // 2], times[0], len(times), peak_rss_mb()))


if __name__ == "__main__":
    sys.exit(main(ARGS))
