"""Process supervision for backends the gateway runs itself (managed `vllm serve`).

Knows nothing of HTTP routes; imports neither `gateway` nor `backends`.
"""
