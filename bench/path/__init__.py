"""The inference-path benchmark: gpuplane's gateway -> router -> workers against LiteLLM, vllm-router and nginx,
all in front of the same two fake OpenAI-compatible upstreams, interleaved in one run."""
