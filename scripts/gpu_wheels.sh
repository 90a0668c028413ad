#!/usr/bin/env bash
# Prepare, here (PyPI reachable), what scripts/gpu_check.sh carries to the GPU machine, whose
# image has no internet and lacks some packages (/work/.library/device/KINDS.md). Run from
# anywhere: bash scripts/gpu_wheels.sh. Exactly these files (CPython 3.12, manylinux x86_64
# or pure Python, each without its dependencies), about 12 MB with the official code:
#
#   .whl/           installed on the device for mvfa-lite (open_clip and its tokenizer)
#     open_clip_torch 3.3.0  open_clip_torch-3.3.0-py3-none-any.whl                      1.5 MB
#     ftfy 6.3.1             ftfy-6.3.1-py3-none-any.whl                                  0.04 MB
#     wcwidth 0.9.4          wcwidth-0.9.4-cp310-abi3-manylinux2014_x86_64...whl          0.8 MB
#   .whl/official/  installed on the device for the official code only
#     kornia 0.9.0           kornia-0.9.0-py3-none-any.whl                                1.9 MB
#     kornia_rs 0.2.0        kornia_rs-0.2.0-cp312-cp312-manylinux_2_17_x86_64...whl      5.3 MB
#     setuptools 69.5.1      setuptools-69.5.1-py3-none-any.whl                           0.9 MB
#                            (the official tokenizer imports pkg_resources.packaging, gone
#                            in setuptools 70; kept apart so that mvfa-lite keeps the image's)
#   .official/      a copy of the official code, $MVFA_OFFICIAL (default
#                   ../shared/reference/MVFA-AD beside the clone, commit a30bf7b)      1.7 MB
#
# Everything else open_clip, kornia and the official scripts import (torch, torchvision, timm,
# regex, huggingface-hub, safetensors, tqdm, numpy, packaging, scipy, scikit-learn, pandas,
# pillow) is in the image. The versions match this machine's venv (pip show open_clip_torch);
# tests/test_gpu_check.py checks that. Both folders are git-ignored and travel as carry.
set -euo pipefail
cd "$(dirname "$0")/.."
MVFA_WHEELS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4)
OFFICIAL_WHEELS=(kornia==0.9.0 kornia_rs==0.2.0 setuptools==69.5.1)
OFFICIAL=${MVFA_OFFICIAL:-../shared/reference/MVFA-AD}
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)

download() {    # folder, then NAME==VERSION ...
    local folder=$1; shift
    "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]/#/--platform=}" -d "$folder" "$@"
}

[[ -f $OFFICIAL/train_few.py ]] || { echo "gpu_wheels.sh: $OFFICIAL is not a checkout of the official MVFA code; set MVFA_OFFICIAL" >&2; exit 2; }
rm -rf .whl .official
download .whl "${MVFA_WHEELS[@]}"
download .whl/official "${OFFICIAL_WHEELS[@]}"
cp -r "$OFFICIAL" .official
rm -rf .official/.git
du -sh .whl/*.whl .whl/official/*.whl .official
echo "total: $(du -sc .whl .official | tail -1 | cut -f1) KiB (a device call carries at most 64 MiB)"
