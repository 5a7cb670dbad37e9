"""The `clients` and `prices` entries: every mistake named at once, keys held as digests only, --hash-key and
--check-config showing where keys come from but never a key or a digest."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chatgpt_apiserver.clients.prices import SHIPPED, PriceTable
from chatgpt_apiserver.config.check import render
from chatgpt_apiserver.config.clients import Budget, Price, RateLimit, snapshot_of
from chatgpt_apiserver.config.files import ConfigError
from chatgpt_apiserver.config.settings import parse_settings
from chatgpt_apiserver.endpoints.usage import Usage

ROOT = Path(__file__).resolve().parent.parent
MOCK = {"type": "mock"}
KEY = "sk-" + "client-canary-0123456789abcdef"  # split so it does not look like a committed key


def write(tmp_path: Path, document: Any) -> list[str]:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(document))
    return ["--config-file", str(path)]


def problems(tmp_path: Path, document: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(write(tmp_path, document), env or {})
    return caught.value.problems


def test_a_full_client_entry(tmp_path: Path) -> None:
    (tmp_path / "nb").write_text("notebook-key\n")
    settings, _ = parse_settings(write(tmp_path, {"controllers": [MOCK], "client_keys": ["plain-key"], "clients": [
        {"name": "chat-frontend", "key_sha256": hashlib.sha256(b"front").hexdigest(), "priority": "interactive",
         "share": 3, "rpm": 600, "tpm": 400000, "max_concurrency": 50},
        {"name": "embed-nightly", "key_env": "EMBED_JOB_KEY", "priority": "batch",
         "models": ["text-embedding-3-small"], "tpm": 2000000,
         "budget": {"tokens": 500000000, "usd": 40, "period": "month"}},
        {"name": "notebooks", "key_file": "nb", "model_limits": {"gpt-4o": {"rpm": 20, "tpm": 40000}}}],
        "prices": {"house-model": {"input": 1, "output": 2}}}), {"EMBED_JOB_KEY": "embed-key"})
    front, embed, notebooks, plain = settings.clients
    assert (front.name, front.priority, front.share, front.limits, front.max_concurrency) == (
        "chat-frontend", "interactive", 3.0, RateLimit(600, 400000), 50)
    assert front.digest == hashlib.sha256(b"front").digest()
    assert embed.digest == hashlib.sha256(b"embed-key").digest() and embed.priority == "batch"
    assert embed.models == frozenset({"text-embedding-3-small"}) and embed.budget == Budget("month", 500000000, 40.0)
    assert notebooks.digest == hashlib.sha256(b"notebook-key").digest()
    assert notebooks.model_limits == {"gpt-4o": RateLimit(20, 40000)} and notebooks.limited
    assert (plain.name, plain.digest, plain.limited) == ("key-1", hashlib.sha256(b"plain-key").digest(), False)
    assert embed.key_source == "env EMBED_JOB_KEY" and plain.key_source == "client_keys"
    assert settings.prices == {"house-model": Price(1.0, None, 2.0)}
    assert "embed-key" not in repr(settings) and hashlib.sha256(b"front").hexdigest() not in repr(settings)
    assert "digest" not in repr(front)


def test_every_client_mistake_is_named_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, {"controllers": [MOCK], "client_keys": ["same-key"], "clients": [
        {"name": "no-key"},
        {"name": "two-keys", "key": "a", "key_env": "X"},
        {"name": "bad digest", "key_sha256": "abc"},
        {"name": "dup", "key": "k1"},
        {"name": "dup", "key": "k2"},
        {"name": "same-as-plain", "key": "same-key"},
        {"name": "limits", "key": "k3", "rpm": 0, "tpm": "many", "max_concurrency": 1.5, "priority": "urgent",
         "share": -1, "colour": "red"},
        {"name": "allow", "key": "k4", "models": ["gpt-4o"], "model_limits": {"o3": {"rpm": 1}}},
        {"name": "budget", "key": "k5", "budget": {"period": "week"}},
        {"name": "env", "key_env": "MISSING"},
        {"name": "file", "key_file": "missing.key"},
        "not an object",
        {"name": "key-1", "key": "k6"}], "prices": {"m": {"output": 1}, "n": {"input": -1}}})
    text = "\n".join(found)
    for expected in ("clients[0].key", "set exactly one of key, key_sha256, key_env, key_file",
                     "clients[1].key", "given 2 ways", "clients[2].name", "clients[4].name", "already used by "
                     "clients[3]", "client_keys[0]", "its key is already the key of clients[5]",
                     "clients[6].rpm", "clients[6].tpm", "clients[6].max_concurrency", "clients[6].priority",
                     "clients[6].share", "clients[6].colour", "clients[7].model_limits", "o3 not in its models",
                     "clients[8].budget", "clients[9].key_env", "env var MISSING", "clients[10].key_file",
                     "clients[11]", "prices.m.input", "prices.n.input",
                     "clients[12].name in", "'key-1': names starting with 'key-' are reserved for the plain "
                     "client_keys"):
        assert expected in text, expected
    assert "client_keys[0].name" not in text  # a setting that does not exist
    assert "k1" not in text and "same-key" not in text  # a mistake names the entry, never its key


def test_a_digest_must_be_sha256_hex_and_names_are_labels(tmp_path: Path) -> None:
    found = problems(tmp_path, {"controllers": [MOCK], "clients": [
        {"name": "a", "key_sha256": "zz" * 32}, {"name": "x" * 65, "key": "k"}, {"name": "a{b}", "key": "k2"}]})
    assert any("clients[0].key_sha256" in p and "64 hex digits" in p for p in found)
    assert any("clients[1].name" in p for p in found) and any("clients[2].name" in p for p in found)


def test_clients_count_as_keys_for_a_public_listener(tmp_path: Path) -> None:
    settings, _ = parse_settings(write(tmp_path, {"host": "0.0.0.0", "controllers": [MOCK],
                                                  "clients": [{"name": "a", "key": "k"}]}), {})
    assert settings.host == "0.0.0.0"
    assert any("refusing to listen on 0.0.0.0" in p for p in problems(tmp_path, {"host": "0.0.0.0",
                                                                                  "controllers": [MOCK]}))


def test_hash_key_prints_the_digest_of_stdin_without_a_config(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "chatgpt_apiserver", "--hash-key"], input=KEY + "\n",
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == hashlib.sha256(KEY.encode()).hexdigest()
    empty = subprocess.run([sys.executable, "-m", "chatgpt_apiserver", "--hash-key"], input="",
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert empty.returncode == 2 and "reads one key on stdin" in empty.stderr


def test_check_config_shows_clients_but_never_a_key_or_digest(tmp_path: Path) -> None:
    digest = hashlib.sha256((KEY + "-hashed").encode()).hexdigest()
    settings, _ = parse_settings(write(tmp_path, {"controllers": [MOCK], "client_keys": [KEY + "-plain"], "clients": [
        {"name": "inline", "key": KEY, "rpm": 60, "tpm": 2_000_000, "budget": {"usd": 5, "period": "day"}},
        {"name": "tiny", "key": KEY + "-tiny", "budget": {"usd": 0.00001, "tokens": 1_000_000}},
        {"name": "hashed", "key_sha256": digest, "priority": "batch", "share": 2,
         "models": ["gpt-4o"], "model_limits": {"gpt-4o": {"tpm": 1000}}}]}), {})
    shown = render(settings)
    assert "- inline: priority=interactive share=1 rpm=60 tpm=2000000" in shown and "budget per day: $5.00" in shown
    assert "budget per month: 1000000 tokens and $0.00001" in shown  # no exponents, no $0.00
    assert "- hashed: priority=batch share=2" in shown and "model_limits[gpt-4o]: tpm=1000" in shown
    assert "key from clients[2].key_sha256 in" in shown and "- key-1:" in shown
    for secret in (KEY, digest, KEY[:12], hashlib.sha256(KEY.encode()).hexdigest(),
                   hashlib.sha256((KEY + "-plain").encode()).hexdigest()):
        assert secret not in shown


def test_the_shipped_price_table_loads_and_config_prices_override_it() -> None:
    document = json.loads(SHIPPED.read_text())
    assert document["_as_of"] >= "2026-11" and "openai.com" in document["_source"]
    assert (ROOT / "etc" / "chatgpt-apiserver" / "prices.json").read_bytes() == SHIPPED.read_bytes()
    table = PriceTable.load({"gpt-4o": Price(1.0, None, 2.0)})
    for model in ("gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini", "o1",
                  "text-embedding-3-small", "text-embedding-3-large"):
        assert table.find(model) is not None, model
    assert table.find("gpt-4o") == Price(1.0, None, 2.0)
    assert table.find("gpt-4o-mini-2024-07-18") == table.find("gpt-4o-mini")  # a snapshot is priced as its model
    assert table.find("house-model") is None and table.find("house-model", "gpt-4.1") == table.find("gpt-4.1")
    mini = table.find("gpt-4o-mini")
    assert mini is not None
    # 1M uncached prompt tokens, 1M cached, 1M completion: 0.15 + 0.075 + 0.60 dollars.
    assert PriceTable.nano(mini, Usage(2_000_000, 1_000_000, 1_000_000)) == 825_000_000
    embedding = table.find("text-embedding-3-small")
    assert embedding is not None and PriceTable.nano(embedding, Usage(0, 0, 0, 1_000_000)) == 20_000_000


@pytest.mark.parametrize("model,base", [("gpt-4o-2024-08-06", "gpt-4o"), ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
                                        ("gpt-4-0613", "gpt-4"), ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
                                        ("gpt-4o", None), ("text-embedding-ada-002", None), ("o3", None),
                                        ("gpt-4-1106-preview", None), ("whisper-1", None)])
def test_a_dated_snapshot_is_of_its_model(model: str, base: str | None) -> None:
    assert snapshot_of(model) == base
