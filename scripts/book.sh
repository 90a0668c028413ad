#!/usr/bin/env bash
# Set everything up, run the small result sweeps, and build the book (offline, CPU, tiny
# random-weight ViT on the embedded data). Output: _build/html/index.html
#
# With real weights on a GPU: MVFA_BOOK_PROFILE=gpu bash scripts/book.sh
# (every notebook runs with ViT-L-14-336 / openai on CUDA; needs internet or MVFA_CLIP_CHECKPOINT)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${MVFA_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH" TQDM_DISABLE=1 PYDEVD_DISABLE_FILE_VALIDATION=1
if [ "${MVFA_BOOK_PROFILE:-cpu}" = "gpu" ]; then
  exec python scripts/build_gpu_book.py
fi
export HF_HUB_OFFLINE=1
mvfa-lite sweep sweeps/book.yaml --force   # cheap: cells of an edited grid run again
mvfa-lite sweep sweeps/book-zeroshot.yaml --force   # the zero-shot rows of notebook 12
jupyter-book build . -W -n --keep-going
echo "book: $PWD/_build/html/index.html"
python scripts/student.py   # the student edition: _build/student/ (book/teaching.md)
