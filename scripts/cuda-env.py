#!/usr/bin/env python3
"""Prints shell lines that let burn's CUDA backend run on a machine that has PyTorch but no
CUDA toolkit: `LD_LIBRARY_PATH` reaching libnvrtc, and `CUDA_PATH` pointing at a directory
whose include/ holds the CUDA headers NVRTC needs.

cubecl compiles its kernels at run time with NVRTC and includes cuda_runtime.h, cuda_bf16.h,
cuda_fp16.h, mma.h (which needs crt/mma.h), cooperative_groups and the CCCL headers
(cuda/barrier, cuda/pipeline; looked for in $CUDA_PATH/include/cccl too). PyTorch's wheels
bring these in pieces: site-packages/nvidia/*/include (the runtime, CCCL; the CUDA 13 wheels
lack crt/) and triton/backends/nvidia/include (a runtime header set with crt/). This script
merges them, first found first kept, into SHIM/include with symbolic links, and links the
first libnvrtc it finds as SHIM/lib/libnvrtc.so (the name cudarc tries first, whatever the
CUDA major version).

Usage: cuda-env.py SHIM   (then `. <(cuda-env.py SHIM)` or write to a file and source it)
"""
import glob
import os
import site
import sys


def merge(source, target):
    """Links every file under `source` into `target` unless that path already exists."""
    for dirpath, _dirnames, filenames in os.walk(source, followlinks=True):
        rel = os.path.relpath(dirpath, source)
        dest_dir = os.path.normpath(os.path.join(target, rel))
        os.makedirs(dest_dir, exist_ok=True)
        for name in filenames:
            link = os.path.join(dest_dir, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(dirpath, name), link)


def main():
    shim = os.path.abspath(sys.argv[1])
    paths = site.getsitepackages() + [site.getusersitepackages()] + sys.path
    roots = [p for p in dict.fromkeys(paths) if p and os.path.isdir(p)]
    libdirs, incdirs, nvrtc = [], [], None
    for root in roots:
        libdirs += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib")))
        incdirs += sorted(glob.glob(os.path.join(root, "nvidia", "*", "include")))
        candidates = sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnvrtc.so*")))
        candidates += sorted(glob.glob(os.path.join(root, "torch", "lib", "libnvrtc*.so*")))
        for path in candidates:
            if "builtins" not in os.path.basename(path) and nvrtc is None:
                nvrtc = path
                libdirs.append(os.path.dirname(path))
    for root in roots:
        incdirs += sorted(glob.glob(os.path.join(root, "triton", "backends", "nvidia", "include")))
    os.makedirs(os.path.join(shim, "include"), exist_ok=True)
    os.makedirs(os.path.join(shim, "lib"), exist_ok=True)
    for inc in incdirs:
        merge(inc, os.path.join(shim, "include"))
    if nvrtc:
        link = os.path.join(shim, "lib", "libnvrtc.so")
        if not os.path.lexists(link):
            os.symlink(nvrtc, link)
    print(f"# nvrtc: {nvrtc}")
    print(f"# include dirs merged, first kept: {incdirs}")
    path = ":".join([os.path.join(shim, "lib")] + list(dict.fromkeys(libdirs)))
    print(f'export LD_LIBRARY_PATH="{path}:${{LD_LIBRARY_PATH:-}}"')
    print(f'[ -n "${{CUDA_PATH:-}}" ] || export CUDA_PATH="{shim}"')


if __name__ == "__main__":
    main()
