"""Cross-check of tga's safetensors files against the PyPI `safetensors` package (run by
tests/unit/test_safetensors.c with $TGA_PYTHON, which needs safetensors, numpy and torch).

    safetensors_check.py DIR

DIR/expected.json (written by the C test) lists the files the C writer made and their tensors as
(name, dtype, shape, k). Every value is a function of (dtype, element index, k), computed here
independently of the C test: this script loads the C files with safetensors (safe_open with
torch, and safetensors.numpy.load_file), checks names, dtypes, shapes, values, metadata, the raw
header layout and the sharded index, then writes DIR/<python_output> with safetensors.torch for
the C reader to check. Exit status 0 when everything matches.
"""
import json
import os
import re
import struct
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file
from safetensors.torch import save_file

TORCH_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I32": torch.int32, "I64": torch.int64, "U8": torch.uint8,
}
ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1}

failures = []


def fail(message):
    failures.append(message)
    print("safetensors_check: " + message, file=sys.stderr)


def expected_values(dtype, shape, k):
    """The value formulas shared (by specification, not by code) with test_safetensors.c."""
    n = int(np.prod(shape)) if shape else 1
    i = np.arange(n, dtype=np.int64)
    u = i.astype(np.uint64)
    if dtype == "F32":
        v = torch.from_numpy((((i * 7919 + k * 104729) % 20011 - 10005) / 1024.0).astype(np.float32))
    elif dtype == "F16":
        v = torch.from_numpy((((i * 31 + k) % 2001 - 1000) / 8.0).astype(np.float16))
    elif dtype == "BF16":
        wide = (((i * 7919 + k * 104729) % 200003 - 100001) / 4096.0).astype(np.float32)
        v = torch.from_numpy(wide).to(torch.bfloat16)  # round to nearest even
    elif dtype == "I32":
        bits = (u * np.uint64(2654435761) + np.uint64(k)) & np.uint64(0xFFFFFFFF)
        v = torch.from_numpy(bits.astype(np.uint32).view(np.int32))
    elif dtype == "I64":
        v = torch.from_numpy((u * np.uint64(0x9E3779B97F4A7C15) + np.uint64(k)).view(np.int64))
    elif dtype == "U8":
        v = torch.from_numpy(((i * 37 + k) % 256).astype(np.uint8))
    else:
        raise ValueError(dtype)
    return v.reshape(shape)


def bits(t):
    """Bit-exact comparison form (bf16 has no numpy dtype)."""
    t = t.contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16).numpy()
    return t.numpy()


def check_tensor(where, name, got, spec):
    want = expected_values(spec["dtype"], spec["shape"], spec["k"])
    if got.dtype != TORCH_DTYPES[spec["dtype"]]:
        fail(f"{where}: {name} has dtype {got.dtype}, expected {spec['dtype']}")
    elif list(got.shape) != spec["shape"]:
        fail(f"{where}: {name} has shape {list(got.shape)}, expected {spec['shape']}")
    elif not np.array_equal(bits(got), bits(want)):
        fail(f"{where}: {name} values differ")


def check_raw_layout(path, specs):
    """The header as bytes: 8-byte aligned, space padded, entries and data in the order written."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = f.read(header_len).decode("utf-8")
    if header_len % 8:
        fail(f"{path}: header length {header_len} is not a multiple of 8")
    body = header.rstrip(" ")
    parsed = json.loads(body)
    names = [n for n in parsed if n != "__metadata__"]
    if names != [s["name"] for s in specs]:
        fail(f"{path}: header order {names} is not the order written")
    offset = 0
    for s in specs:
        size = ITEM_BYTES[s["dtype"]] * (int(np.prod(s["shape"])) if s["shape"] else 1)
        if parsed[s["name"]]["data_offsets"] != [offset, offset + size]:
            fail(f"{path}: {s['name']} data_offsets {parsed[s['name']]['data_offsets']}")
        offset += size


def check_file(path, specs, metadata):
    check_raw_layout(path, specs)
    with safe_open(path, framework="pt") as f:
        if sorted(f.keys()) != sorted(s["name"] for s in specs):
            fail(f"{path}: tensors {sorted(f.keys())}")
        if metadata is not None and f.metadata() != metadata:
            fail(f"{path}: metadata {f.metadata()}, expected {metadata}")
        for s in specs:
            if s["name"] in f.keys():
                check_tensor(path, s["name"], f.get_tensor(s["name"]), s)


def check_sharded(root, case):
    directory, prefix, specs = os.path.join(root, case["dir"]), case["prefix"], case["tensors"]
    with open(os.path.join(directory, prefix + ".safetensors.index.json")) as f:
        index = json.load(f)
    total = sum(ITEM_BYTES[s["dtype"]] * (int(np.prod(s["shape"])) if s["shape"] else 1) for s in specs)
    if index["metadata"]["total_size"] != total:
        fail(f"{directory}: total_size {index['metadata']['total_size']}, expected {total}")
    weight_map = index["weight_map"]
    if sorted(weight_map) != sorted(s["name"] for s in specs):
        fail(f"{directory}: weight_map names {sorted(weight_map)}")
    files = sorted(set(weight_map.values()))
    pattern = re.compile(re.escape(prefix) + r"-(\d{5})-of-(\d{5})\.safetensors$")
    numbers = [pattern.match(name) for name in files]
    if len(files) != case["n_shards"] or not all(numbers) or \
            [int(m.group(1)) for m in numbers] != list(range(1, len(files) + 1)) or \
            any(int(m.group(2)) != len(files) for m in numbers):
        fail(f"{directory}: shard files {files}, expected {case['n_shards']} named {prefix}-0000i-of-0000n")
    shard_order = [files.index(weight_map[s["name"]]) for s in specs if s["name"] in weight_map]
    if shard_order != sorted(shard_order):
        fail(f"{directory}: tensors are not in shards in the order written")
    for name in files:
        in_shard = [s for s in specs if weight_map.get(s["name"]) == name]
        check_file(os.path.join(directory, name), in_shard, case.get("metadata"))


def check_one_shard(root, case):
    directory, prefix = os.path.join(root, case["dir"]), case["prefix"]
    if os.path.exists(os.path.join(directory, prefix + ".safetensors.index.json")):
        fail(f"{directory}: a one-shard set must not have an index")
    path = os.path.join(directory, prefix + ".safetensors")
    check_file(path, case["tensors"], case.get("metadata"))
    arrays = load_file(path)  # the numpy loader, on a set without bf16
    for s in case["tensors"]:
        if not np.array_equal(arrays[s["name"]], expected_values(s["dtype"], s["shape"], s["k"]).numpy()):
            fail(f"{path}: {s['name']} differs through safetensors.numpy")


def write_for_c(root, expected):
    tensors = {s["name"]: expected_values(s["dtype"], s["shape"], s["k"]).contiguous()
               for s in expected["single"]["tensors"]}
    save_file(tensors, os.path.join(root, expected["python_output"]), metadata={"source": "python", "format": "pt"})


def main():
    root = sys.argv[1]
    with open(os.path.join(root, "expected.json")) as f:
        expected = json.load(f)
    single = expected["single"]
    check_file(os.path.join(root, single["file"]), single["tensors"], single["metadata"])
    check_sharded(root, expected["sharded"])
    check_one_shard(root, expected["one_shard"])
    write_for_c(root, expected)
    if failures:
        print(f"safetensors_check: {len(failures)} failures", file=sys.stderr)
        return 1
    print("safetensors_check: PyPI safetensors reads every tga file as intended")
    return 0


if __name__ == "__main__":
    sys.exit(main())
