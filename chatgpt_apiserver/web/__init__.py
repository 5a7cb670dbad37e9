"""The HTTP surface: routes, handlers, client keys, the access log and slow-client timeouts."""
