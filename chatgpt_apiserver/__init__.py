"""chatgpt-apiserver: an OpenAI-compatible gateway that spreads chat completions over many API keys."""

__version__ = "0.1.0"
