"""The command line: `main(argv) -> int`, built from small named steps."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Optional, TextIO

from .auth import key_digest
from .config.check import render, warnings
from .config.files import ConfigError
from .config.settings import Settings, parse_settings
from .ops.logs import configure_logging

log = logging.getLogger("chatgpt_apiserver")

DEMO_BANNER = (
    "DEMO MODE: no config file and no OPENAI_API_KEY were found, so the demo config is served. "
    "Its controllers are mocks that answer with generated text; no model is called. "
    "See README.md, 'Configuration', to serve real upstreams."
)


def get_settings(argv: Optional[Sequence[str]]) -> tuple[Optional[Settings], bool, int]:
    """Parse and validate; on failure print every problem and return exit status 2."""
    try:
        settings, check = parse_settings(argv)
    except ConfigError as error:
        print(f"chatgpt-apiserver: {error}", file=sys.stderr)
        return None, False, 2
    except SystemExit as exit_:  # argparse: --help, --version, or a bad flag (already printed)
        return None, False, int(exit_.code or 0)
    return settings, check, 0


def run_server(settings: Settings, argv: Sequence[str]) -> int:
    """Serve on uvloop until a stop signal; SIGHUP re-reads the config from the same `argv`."""
    import uvloop

    from .server import serve

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings, argv))


def hash_key(stdin: TextIO) -> int:
    """`--hash-key`: print the SHA-256 digest of the key on stdin, for a client's `key_sha256`."""
    key = stdin.read().strip()
    if not key or "\n" in key:
        print("chatgpt-apiserver: --hash-key reads one key on stdin (e.g. printf %s \"$KEY\" | "
              "chatgpt-apiserver --hash-key)", file=sys.stderr)
        return 2
    print(key_digest(key).hex())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for `chatgpt-apiserver` and `python -m chatgpt_apiserver`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--hash-key" in argv or "--hash_key" in argv:  # needs no config
        return hash_key(sys.stdin)
    settings, check, status = get_settings(argv)
    if settings is None:
        return status
    if check:
        print(render(settings))
        return 0
    secrets = tuple(spec.api_key.reveal().encode() for spec in settings.controllers if spec.api_key)
    configure_logging(settings.log_level, settings.log_format, secrets=secrets)
    if settings.demo:
        log.warning(DEMO_BANNER)
    for warning in warnings(settings):
        log.warning("config: %s", warning)
    try:
        return run_server(settings, argv)
    except OSError as error:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, error.strerror)
        return 1
    except KeyboardInterrupt:
        return 0
