"""Reads what `tga export` wrote back with PyPI's safetensors and checks it against the run it came from.

    export_check.py --run RUN --dump DUMP --export DIR --parts model|projector|model,projector
                    [--dtype f32|bf16] [--arch llama|mistral] [--shards single|multi] [--bos N --eos N]

RUN/config.effective.yaml gives the model's shape. DUMP (written by make_run.c) holds every parameter as
tga holds it (param.<our name>.npy), a token sequence and tga's own logits for it. Checked:
  - DIR holds exactly the files of the parts asked for;
  - tensor names (spelled here from HF's and LLaVA's sources, independently of trainer/export.c), shapes,
    dtypes and values; bf16 must equal torch's own cast of the float32 values bit for bit;
  - the shard set: consecutive model-0000i-of-0000N names, every tensor in exactly one file, the
    index's weight_map pointing at that file and its total_size, {"format": "pt"} in every file;
  - config.json against the run's config;
  - the projector files load strictly into LLaVA's and HF's projector modules (rebuilt as their sources
    build them), and both compute what the dumped parameters compute;
  - the exported model, run by the HF-semantics forward of tests/oracle/reference.py from config.json
    and the HF names alone, gives tga's logits (float32 exports); and deliberately broken copies
    (q/k swapped, a matrix transposed, Meta's RoPE permutation, layers reordered, norms swapped, the
    head dropped) do not, which shows the comparison sees those mistakes.
Prints one line per check and exits 1 on any failure.
"""
import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import yaml
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle"))
import reference  # noqa: E402  (tests/oracle: the HF LlamaForCausalLM-semantics forward)

LOGITS_TOLERANCE = 1e-4  # relative, as the oracle's forward values
BROKEN_MINIMUM = 1e-2    # a broken copy must miss tga's logits by at least this much

# HF LlamaDecoderLayer's module names for our per-layer parameters (modeling_llama.py).
LAYER_HF = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
            "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
            "w_down": "mlp.down_proj", "attn_norm": "input_layernorm",
            "ffn_norm": "post_attention_layernorm"}

failures = []


def check(ok, message):
    print(("ok    " if ok else "FAIL  ") + message)
    if not ok:
        failures.append(message)
    return ok


def hf_name(ours):
    fixed = {"tok_embeddings": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
             "lm_head": "lm_head.weight"}
    if ours in fixed:
        return fixed[ours]
    _, layer, weight = ours.split(".")
    return f"model.layers.{layer}.{LAYER_HF[weight]}.weight"


def projector_names(projector_type):
    """{our name: (LLaVA name, HF name)}. LLaVA's linear projector is a bare nn.Linear, the mlp one
    nn.Sequential(Linear, GELU, Linear) (llava/model/multimodal_projector/builder.py)."""
    if projector_type == "linear":
        return {"projector.0.weight": ("model.mm_projector.weight", "multi_modal_projector.linear_1.weight"),
                "projector.0.bias": ("model.mm_projector.bias", "multi_modal_projector.linear_1.bias")}
    names = {}
    for ours, hf in (("0", "linear_1"), ("2", "linear_2")):
        for kind in ("weight", "bias"):
            names[f"projector.{ours}.{kind}"] = (f"model.mm_projector.{ours}.{kind}",
                                                 f"multi_modal_projector.{hf}.{kind}")
    return names


def expected_tensor(array, dtype):
    t = torch.from_numpy(array)
    return t.to(torch.bfloat16) if dtype == "bf16" else t


def same_tensor(got, want):
    return got.dtype == want.dtype and tuple(got.shape) == tuple(want.shape) and torch.equal(got, want)


def read_file(path):
    """(tensors, metadata) of one safetensors file."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


# ---- the language model -------------------------------------------------------------------------

def read_model_set(export, shards):
    """All tensors of the HF set and the file each came from; checks the layout of the set."""
    files = sorted(f for f in os.listdir(export) if f.startswith("model") and f.endswith(".safetensors"))
    index_path = export / "model.safetensors.index.json"
    if shards == "single":
        check(files == ["model.safetensors"] and not index_path.exists(),
              f"one shard: model.safetensors and no index ({files})")
    else:
        n = len(files)
        wanted = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        check(n > 1 and files == wanted and index_path.exists(), f"{n} shards named model-0000i-of-{n:05d}, an index")
    tensors, where, metadata = {}, {}, {}
    for name in files:
        loaded, metadata[name] = read_file(export / name)
        for key, value in loaded.items():
            if key in tensors:
                check(False, f"{key} is in both {where[key]} and {name}")
            tensors[key], where[key] = value, name
    odd = {name: meta for name, meta in metadata.items() if meta != {"format": "pt"}}
    check(not odd, f"every shard's metadata is {{'format': 'pt'}} ({odd})")
    if index_path.exists():
        index = json.loads(index_path.read_text())
        check(index.get("weight_map") == where, "index weight_map: every tensor once, at the file that holds it")
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        check(index.get("metadata", {}).get("total_size") == total, f"index total_size = {total} bytes")
    return tensors


def check_model_tensors(tensors, dump, dtype, tied):
    ours = [n for n in dump if not n.startswith("projector.")]
    check(("lm_head" in ours) == (not tied), f"the run's model has lm_head exactly when untied (tied={tied})")
    wanted = {hf_name(n): n for n in ours}
    missing, extra = sorted(set(wanted) - set(tensors)), sorted(set(tensors) - set(wanted))
    check(not missing and not extra, f"model tensor names: {len(tensors)} (missing {missing}, unexpected {extra})")
    bad = [hf for hf, n in wanted.items()
           if hf in tensors and not same_tensor(tensors[hf], expected_tensor(dump[n], dtype))]
    check(not bad, f"model tensor shapes, dtype {dtype} and values equal tga's ({len(bad)} differ: {bad[:4]})")


def check_config(export, cfg, args):
    config = json.loads((export / "config.json").read_text())
    m = cfg["model"]
    arch = {"llama": ("LlamaForCausalLM", "llama"), "mistral": ("MistralForCausalLM", "mistral")}[args.arch]
    wanted = {"architectures": [arch[0]], "model_type": arch[1], "hidden_size": m["dim"],
              "intermediate_size": m["ffn_dim"], "num_hidden_layers": m["n_layers"],
              "num_attention_heads": m["n_heads"], "num_key_value_heads": m["n_kv_heads"],
              "head_dim": m["head_dim"] or m["dim"] // m["n_heads"], "vocab_size": m["vocab_size"],
              "max_position_embeddings": m["max_seq_len"], "rms_norm_eps": float(m["norm_eps"]),
              "rope_theta": float(m["rope_theta"]), "tie_word_embeddings": bool(m["tie_embeddings"]),
              "torch_dtype": {"f32": "float32", "bf16": "bfloat16"}[args.dtype], "hidden_act": "silu",
              "rope_scaling": None, "attention_bias": False}
    wanted.update(bos_token_id=args.bos, eos_token_id=args.eos)
    wrong = {key: (config.get(key), value) for key, value in wanted.items() if config.get(key) != value}
    check(not wrong, f"config.json: {len(wanted)} keys match the run's config ((found, expected): {wrong})")
    return config


def params_from_hf(tensors, config):
    """Our parameter names from the HF ones and config.json alone (the reference's input)."""
    params = {"tok_embeddings": tensors["model.embed_tokens.weight"], "final_norm": tensors["model.norm.weight"]}
    for layer in range(config["num_hidden_layers"]):
        for ours, hf in LAYER_HF.items():
            params[f"layers.{layer}.{ours}"] = tensors[f"model.layers.{layer}.{hf}.weight"]
    if not config["tie_word_embeddings"]:
        params["lm_head"] = tensors["lm_head.weight"]
    return {k: v.double() for k, v in params.items()}


def reference_logits(params, config, tokens):
    m = {"n_layers": config["num_hidden_layers"], "n_heads": config["num_attention_heads"],
         "n_kv_heads": config["num_key_value_heads"], "head_dim": config["head_dim"],
         "norm_eps": config["rms_norm_eps"], "rope_theta": config["rope_theta"],
         "tie_embeddings": "lm_head" not in params}
    embeds = params["tok_embeddings"][torch.from_numpy(tokens.astype(np.int64))][None]
    _, logits, _ = reference.decoder(params, m, embeds, torch.tensor([len(tokens)]))
    return logits[0]


def relative_error(got, want):
    want = torch.from_numpy(want).double()
    return float((got - want).norm() / want.norm())


def meta_permute(w, n_heads):
    """The interleaved-pair permutation of Meta's checkpoints (transformers' convert_llama_weights_to_hf)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def broken_copies(params, config):
    """(what, params) pairs, each one mistake an exporter could make."""
    def changed(**updates):
        copy = dict(params)
        copy.update(updates)
        return copy

    p, copies = params, []
    if p["layers.0.wq"].shape == p["layers.0.wk"].shape:
        copies.append(("q_proj and k_proj swapped", changed(**{"layers.0.wq": p["layers.0.wk"],
                                                              "layers.0.wk": p["layers.0.wq"]})))
    for name in ("layers.0.wq", "layers.0.wo", "layers.0.w_gate"):
        if p[name].shape[0] == p[name].shape[1]:
            copies.append((f"{name} transposed", changed(**{name: p[name].T})))
    copies.append(("q/k with Meta's RoPE permutation", changed(**{
        "layers.0.wq": meta_permute(p["layers.0.wq"], config["num_attention_heads"]),
        "layers.0.wk": meta_permute(p["layers.0.wk"], config["num_key_value_heads"])})))
    swapped = {k.replace("layers.0.", "layers.1."): v for k, v in p.items() if k.startswith("layers.0.")}
    swapped.update({k.replace("layers.1.", "layers.0."): v for k, v in p.items() if k.startswith("layers.1.")})
    copies.append(("layers 0 and 1 in the wrong order", changed(**swapped)))
    copies.append(("input_layernorm and post_attention_layernorm swapped",
                   changed(**{"layers.0.attn_norm": p["layers.0.ffn_norm"],
                              "layers.0.ffn_norm": p["layers.0.attn_norm"]})))
    if "lm_head" in p:
        copies.append(("lm_head missing (tied to the embeddings instead)",
                       {k: v for k, v in p.items() if k != "lm_head"}))
    return copies


def check_forward(tensors, config, dump_dir):
    tokens, want = np.load(dump_dir / "tokens.npy"), np.load(dump_dir / "logits.npy")
    params = params_from_hf(tensors, config)
    err = relative_error(reference_logits(params, config, tokens), want)
    check(err <= LOGITS_TOLERANCE, f"HF-semantics forward of the export = tga's logits (relative error {err:.2e})")
    for what, broken in broken_copies(params, config):
        if broken.keys() == params.keys() and all(torch.equal(broken[k], params[k]) for k in params):
            print(f"skip  {what}: the same model here (e.g. both norms still 1)")
            continue
        err = relative_error(reference_logits(broken, config, tokens), want)
        check(err >= BROKEN_MINIMUM, f"the comparison sees {what} (relative error {err:.2e})")


# ---- the projector ------------------------------------------------------------------------------

def llava_projector(projector_type, vision_dim, dim):
    """As LLaVA's build_vision_projector builds it."""
    if projector_type == "linear":
        return nn.Linear(vision_dim, dim)
    return nn.Sequential(nn.Linear(vision_dim, dim), nn.GELU(), nn.Linear(dim, dim))


class HfProjector(nn.Module):
    """transformers' LlavaMultiModalProjector (linear_1, act, linear_2); linear_2 absent for a linear one."""

    def __init__(self, vision_dim, dim, two_layers):
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(dim, dim) if two_layers else None

    def forward(self, x):
        y = self.linear_1(x)
        return self.linear_2(self.act(y)) if self.linear_2 is not None else y


def check_projector(export, dump, cfg, dtype):
    projector_type, vision_dim, dim = cfg["projector"]["type"], cfg["projector"]["vision_dim"], cfg["model"]["dim"]
    names = projector_names(projector_type)
    files = {}
    for scheme, file_name in enumerate(("mm_projector.safetensors", "multi_modal_projector.safetensors")):
        tensors, meta = read_file(export / file_name)
        files[file_name] = tensors
        wanted = {names[ours][scheme]: ours for ours in names}
        check(meta == {"format": "pt"}, f"{file_name}: metadata {meta}")
        check(set(tensors) == set(wanted), f"{file_name}: names {sorted(tensors)}")
        bad = [n for n, ours in wanted.items()
               if n in tensors and not same_tensor(tensors[n], expected_tensor(dump[ours], dtype))]
        check(not bad, f"{file_name}: shapes, dtype {dtype} and values equal tga's ({bad} differ)")
    if failures:
        return
    # LLaVA's loader keeps what follows "mm_projector." (get_w in llava_arch.initialize_vision_modules).
    llava = llava_projector(projector_type, vision_dim, dim).double()
    llava.load_state_dict({k.split("mm_projector.")[1]: v for k, v in files["mm_projector.safetensors"].items()})
    hf = HfProjector(vision_dim, dim, projector_type != "linear").double()
    hf.load_state_dict({k[len("multi_modal_projector."):]: v
                        for k, v in files["multi_modal_projector.safetensors"].items()})
    features = torch.randn(5, vision_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = {k: expected_tensor(v, dtype).double() for k, v in dump.items() if k.startswith("projector.")}
    want = features @ w["projector.0.weight"].T + w["projector.0.bias"]
    if projector_type != "linear":
        want = nn.functional.gelu(want) @ w["projector.2.weight"].T + w["projector.2.bias"]
    with torch.no_grad():
        for label, module in (("LLaVA's mm_projector", llava), ("HF's multi_modal_projector", hf)):
            err = float((module(features) - want).norm() / want.norm())
            check(err < 1e-12, f"{label} loads strictly and computes tga's projector (relative error {err:.1e})")


# ---- main ---------------------------------------------------------------------------------------

def expected_files(parts, export):
    files = set()
    if "projector" in parts:
        files |= {"mm_projector.safetensors", "multi_modal_projector.safetensors"}
    if "model" in parts:
        files |= {"config.json"} | {f for f in os.listdir(export) if re.fullmatch(
            r"model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json", f)}
    return files


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--dump", type=Path, required=True)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--parts", required=True)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--arch", choices=["llama", "mistral"], default="llama")
    ap.add_argument("--shards", choices=["single", "multi"], default="single")
    ap.add_argument("--bos", type=int)
    ap.add_argument("--eos", type=int)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    cfg = yaml.safe_load((args.run / "config.effective.yaml").read_text())
    dump = {p.name[len("param."):-len(".npy")]: np.load(p) for p in args.dump.glob("param.*.npy")}
    print(f"export_check: {args.export} ({args.parts}, {args.dtype}) against {args.run}")

    present, wanted = set(os.listdir(args.export)), expected_files(parts, args.export)
    check(present == wanted, f"{len(present)} files, those of the parts asked for (missing {sorted(wanted - present)}, "
          f"unexpected {sorted(present - wanted)})")
    if args.dtype == "bf16":
        ties = sum(int(((a.view(np.uint32) & 0xFFFF) == 0x8000).sum()) for a in dump.values())
        check(ties > 0, f"{ties} values lie exactly halfway between two bf16 values (rounding is exercised)")
    if "projector" in parts:
        check_projector(args.export, dump, cfg, args.dtype)
    if "model" in parts:
        tensors = read_model_set(args.export, args.shards)
        check_model_tensors(tensors, dump, args.dtype, bool(cfg["model"]["tie_embeddings"]))
        config = check_config(args.export, cfg, args)
        if args.dtype == "f32" and not failures:
            check_forward(tensors, config, args.dump)
    print(f"export_check: {'FAIL' if failures else 'PASS'} ({len(failures)} failure(s))")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
