#!/usr/bin/env bash
# The wheels benchmarks/gpu_session.sh needs on a lent GPU machine, whose image has PyTorch,
# transformers and the scientific stack but no diffusers or pydantic and older Hugging Face
# libraries: this machine's versions of those, for CPython 3.12 on x86-64 Linux, into .whl/
# (ignored by git; carried with the call). Run once, from the repository root, with PyPI reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl
for name in diffusers transformers tokenizers huggingface-hub hf-xet pydantic pydantic-core annotated-types \
            typing-inspection; do
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$name==$(version "$name")"
done
ls -la .whl
