"""Every OpenAI endpoint the gateway serves, as data: declarations, validation, usage, forms."""
