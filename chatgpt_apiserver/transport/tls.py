"""The TLS settings for upstreams: verification on, the system CA store, loaded once per process."""

from __future__ import annotations

import functools
import ssl
from typing import Optional


@functools.lru_cache(maxsize=4)
def _context(cafile: Optional[str], capath: Optional[str]) -> ssl.SSLContext:
    return ssl.create_default_context()  # reads the same SSL_CERT_FILE / SSL_CERT_DIR as the key


def client_context() -> ssl.SSLContext:
    """The shared client context: certificates verified against the system store, hostnames checked.

    Reading the CA store costs milliseconds and memory per context, so every connection shares one. It is
    keyed by the store's location, which only a test changes (SSL_CERT_FILE) in the life of a process.
    """
    paths = ssl.get_default_verify_paths()
    return _context(paths.cafile, paths.capath)
