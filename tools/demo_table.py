#!/usr/bin/python3
"""The demo's closing table from `tga eval --out` summaries: one row per run with image DSR, text
DSR and benign-image accuracy, then the per-layer image-vs-caption hidden-state cosine.
    demo_table.py EVAL_CE.json EVAL_TGA.json"""
import json
import os
import sys


def load(path):
    with open(path) as f:
        summary = json.load(f)
    sets = {os.path.basename(s["records_file"]).split(".")[0]: s for s in summary["sets"]}
    return os.path.basename(summary["run"].rstrip("/")), sets


def main(paths):
    runs = [load(p) for p in paths]
    print(f"{'run':<12} {'image DSR':>10} {'text DSR':>10} {'utility acc':>12}   (n = records per set)")
    for name, sets in runs:
        image, text, util = sets["eval_image_dsr"], sets["eval_text_dsr"], sets["eval_utility"]
        print(f"{name:<12} {image['refusal_rate']:>10.3f} {text['refusal_rate']:>10.3f} {util['accuracy']:>12.3f}"
              f"   (n = {image['records']}, {text['records']}, {util['records']})")
    layers = len(runs[0][1]["eval_image_dsr"]["probe"]["cosine_by_layer"])
    print("\nimage vs caption hidden-state cosine (harmful-object images), by layer l (hs[l]):")
    print(f"{'run':<12} " + " ".join(f"{'l=' + str(l):>7}" for l in range(layers)))
    for name, sets in runs:
        cos = sets["eval_image_dsr"]["probe"]["cosine_by_layer"]
        print(f"{name:<12} " + " ".join(f"{c:>7.3f}" for c in cos))


if __name__ == "__main__":
    main(sys.argv[1:])
