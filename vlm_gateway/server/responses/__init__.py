"""The OpenAI Responses API (POST /v1/responses), served through each backend's chat call."""
