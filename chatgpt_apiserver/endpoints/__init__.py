"""Every OpenAI endpoint the gateway serves, as data: declarations, request validation, usage, forms."""
