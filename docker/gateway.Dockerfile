# The gateway inside the official vLLM OpenAI server image: `vllm` is on PATH, the gateway
# runs from its own virtual environment (vLLM and the gateway pin different fastapi versions).
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}
WORKDIR /opt/vlm-gateway
COPY pyproject.toml README.md ./
COPY vlm_gateway vlm_gateway
RUN python3 -m venv /opt/vlm-gateway/.venv \
    && /opt/vlm-gateway/.venv/bin/pip install --no-cache-dir .
ENTRYPOINT ["/opt/vlm-gateway/.venv/bin/vlm-gateway"]
CMD ["serve", "--config", "/config/gateway.yaml", "--host", "0.0.0.0", "--port", "8000"]
