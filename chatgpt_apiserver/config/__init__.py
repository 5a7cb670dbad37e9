"""Configuration: every option, the config file, controller entries, and the validated settings."""
