"""Anthropic's Messages API (POST /v1/messages), served through each backend's chat call."""
