# The gateway inside the official vLLM OpenAI server image: `vllm` is on PATH, the gateway
# runs from its own virtual environment (vLLM and the gateway pin different fastapi versions).
# `pip install .` with no extras is the whole gateway (Pillow included); the blip2 extra (torch,
# transformers) is only for BLIP-2 in the gateway's own process, which this image leaves to vLLM.
# The postgres extra (psycopg, a few MB) lets several gateways share batches (docs/scale-out.md).
# tests/test_install.py follows these steps on a machine without a container engine.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}
# vLLM decodes audio (and a video's sound track) with its `audio` extra: PyAV, soundfile, soxr,
# scipy. The official image leaves its optional dependencies out (licences, vLLM #8030), so an
# audio request would fail inside vLLM; vLLM's docs add them in a layer like this one, with the
# version of the vLLM already in the image, so only the extras' packages are added. (`video`
# names no package in 0.32, where OpenCV and torchcodec come with vLLM; kept for other versions.)
RUN VLLM_VERSION="$(python3 -c 'from importlib.metadata import version; print(version("vllm"))')" \
    && uv pip install --system --no-cache "vllm[audio,video]==${VLLM_VERSION}"
WORKDIR /opt/vlm-gateway
COPY pyproject.toml README.md ./
COPY vlm_gateway vlm_gateway
RUN python3 -m venv /opt/vlm-gateway/.venv \
    && /opt/vlm-gateway/.venv/bin/pip install --no-cache-dir ".[postgres]"
# Batch files, their SQLite store and vLLM logs: mount a volume here (docker-compose.yml does).
ENV VLMGW_DATA_DIR=/data
EXPOSE 8000
ENTRYPOINT ["/opt/vlm-gateway/.venv/bin/vlm-gateway"]
CMD ["serve", "--config", "/config/gateway.yaml", "--host", "0.0.0.0", "--port", "8000"]
