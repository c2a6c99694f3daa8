"""Copies kernels/cuda into a scratch tree with the two pieces of CUDA syntax that a C++ compiler
cannot read rewritten for the host emulator (simt.h):
    name<targs><<<grid, block, smem, stream>>>(args)  ->  tga_emulate_launch(name<targs>, grid, block, smem, stream, args)
    extern __shared__                                  ->  extern   (simt.h turns other __shared__ into static)
Usage: translate.py SOURCE_DIR DEST_DIR"""
import pathlib
import re
import sys

LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)


def translate(text):
    text = text.replace("extern __shared__", "extern")
    return LAUNCH.sub(lambda m: "tga_emulate_launch(%s, %s, " % (m.group(1), " ".join(m.group(2).split())), text)


def main():
    src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.suffix in (".cu", ".cuh", ".h", ".c"):
            (dst / path.name).write_text(translate(path.read_text()))


if __name__ == "__main__":
    main()
