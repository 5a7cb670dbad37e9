"""The upstream transport: a pooled keep-alive HTTP/1.1 client and what a reply offers."""
