"""Real llama.cpp engines behind the gateway: a multi-turn chat workload, prefix affinity on and off, round robin."""
