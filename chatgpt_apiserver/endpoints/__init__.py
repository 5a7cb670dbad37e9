"""OpenAI endpoints the gateway serves beyond chat completions."""
