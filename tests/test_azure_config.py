"""`azure` controller entries: every mistake named by its key, the defaults, and a report that shows no key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatgpt_apiserver.config.check import render
from chatgpt_apiserver.config.settings import parse_settings
from chatgpt_apiserver.controllers import build_controller
from chatgpt_apiserver.controllers.azure import AzureController
from chatgpt_apiserver.endpoints.catalog import ENDPOINTS
from chatgpt_apiserver.transport.client import Transport

from .test_config import problems, write

KEY = "3f9a0c1e5b7d2f4a6c8e0b2d4f6a8c0e"  # Azure keys look like this: nothing key-like to scrub by pattern
ENDPOINT = "https://my-east.openai.azure.com"
DEPLOYMENTS = {"gpt-4o": "gpt4o-east-prod", "text-embedding-3-small": "emb-small-east"}


def azure(**config: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"endpoint": ENDPOINT, "api_key": KEY, "deployments": DEPLOYMENTS}
    base.update(config)
    return {"type": "azure", "name": "east", "config": {k: v for k, v in base.items() if v is not None}}


def settings_of(tmp_path: Path, *entries: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    config = write(tmp_path / "c.json", {"controllers": list(entries)})
    return parse_settings(["--config-file", str(config)], env or {})[0]


def mistakes(tmp_path: Path, *entries: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    config = write(tmp_path / "c.json", {"controllers": list(entries)})
    return [p.replace(f" in {config}", "") for p in problems(["--config-file", str(config)], env or {})]


def test_the_issues_example_with_its_defaults(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()
    write(tmp_path / "creds" / "azure-east", KEY + "\n")
    entry = {"type": "azure", "name": "eastus-gpt4o", "weight": 2, "tpm": 450000, "rpm": 2700,
             "config": {"endpoint": ENDPOINT, "api_key_file": "${CREDENTIALS_DIRECTORY}/azure-east",
                        "api_version": "2024-10-21", "deployments": DEPLOYMENTS}}
    spec = settings_of(tmp_path, entry, env={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}).controllers[0]
    assert (spec.type, spec.weight, spec.models) == ("azure", 2, DEPLOYMENTS)  # the deployments are its models
    assert spec.api_key.reveal() == KEY and spec.api_key_source == f"file {tmp_path / 'creds' / 'azure-east'}"
    assert spec.settings["api"] == "classic" and spec.settings["api_version"] == "2024-10-21"
    assert not {"api_key", "api_key_env", "api_key_file"} & set(spec.settings)
    defaults = settings_of(tmp_path, azure()).controllers[0].settings
    assert defaults["api_version"] == "2024-10-21"  # the newest GA version of the classic URLs
    assert "api_version" not in settings_of(tmp_path, azure(api="v1")).controllers[0].settings  # v1 needs none


@pytest.mark.parametrize("config,problem", [
    ({"endpoint": None}, "controllers[0].config.endpoint: required"),
    ({"endpoint": "http://my-east.openai.azure.com"},
     "controllers[0].config.endpoint: must be an https:// URL (plain http:// only to a loopback address), "
     "got 'http://my-east.openai.azure.com'"),
    ({"endpoint": "https://my-east.openai.azure.com/OpenAI/"},
     "controllers[0].config.endpoint: give the resource's address without /openai/...: the gateway adds "
     "/openai/deployments/<deployment> (or /openai/v1 with \"api\": \"v1\")"),
    ({"endpoint": "https://my-east.openai.azure.com/openai/v1/"},
     "controllers[0].config.endpoint: give the resource's address without /openai/...: the gateway adds "
     "/openai/deployments/<deployment> (or /openai/v1 with \"api\": \"v1\")"),
    ({"endpoint": "https://my-east.openai.azure.com?api-version=2024-10-21"},
     "controllers[0].config.endpoint: give the resource's address without a query; api_version is a setting "
     "of its own"),
    ({"endpoint": "https://user:pw@my-east.openai.azure.com"},
     "controllers[0].config.endpoint: must not carry credentials; give the key with api_key, api_key_env, "
     "api_key_file or bearer_token_file"),
    ({"deployments": {}}, 'controllers[0].config.deployments: is empty; name at least one deployment, '
                          'e.g. {"gpt-4o": "gpt4o-east"}'),
    ({"deployments": None}, "controllers[0].config.deployments: required"),
    ({"deployments": ["gpt-4o"]}, "controllers[0].config.deployments: expected a map of public model name to "
                                  'deployment name, e.g. {"gpt-4o": "gpt4o-east"}'),
    ({"deployments": {"gpt-4o": "../../admin"}},
     "controllers[0].config.deployments.gpt-4o: expected a deployment name: 1 to 64 letters, digits, '.', '_' "
     "or '-', got '../../admin'"),
    ({"api": "v2"}, "controllers[0].config.api: expected one of classic, v1"),
    ({"api_version": "2024-10-21&x=1"}, "controllers[0].config.api_version: expected an API version such as "
                                        "'2024-10-21' or 'preview', got '2024-10-21&x=1'"),
    ({"api_key": None}, "controllers[0].config.api_key: the API key is missing; set exactly one of api_key, "
                        "api_key_env, api_key_file or bearer_token_file"),
    ({"api_key": ""}, "controllers[0].config.api_key: the API key is empty; put the key there, or name it with "
                      "api_key_env, api_key_file or bearer_token_file"),
    ({"bearer_token_file": "/nonexistent/token"},
     "controllers[0].config.api_key: the API key is given 2 ways (api_key, bearer_token_file); set exactly one "
     "of api_key, api_key_env, api_key_file or bearer_token_file"),
    ({"api_key": None, "bearer_token_file": "/nonexistent/token"},
     "controllers[0].config.bearer_token_file: cannot read /nonexistent/token: No such file or directory"),
    ({"headers": {"API-Key": "another"}},
     "controllers[0].config.headers.API-Key: the credential is sent from api_key, api_key_env, api_key_file or "
     "bearer_token_file; remove this header"),
    ({"base_url": "https://x"}, "controllers[0].config.base_url: unknown setting"),
])
def test_every_mistake_names_its_key(tmp_path: Path, config: dict[str, Any], problem: str) -> None:
    assert mistakes(tmp_path, azure(**config)) == [problem]


def test_models_are_the_deployments_and_an_empty_token_file_is_named(tmp_path: Path) -> None:
    write(tmp_path / "token", "  \n")
    entry = {**azure(api_key=None, bearer_token_file=str(tmp_path / "token")), "models": ["gpt-4o"]}
    assert mistakes(tmp_path, entry) == [
        "controllers[0].models: an azure controller serves the models of its deployments; list them in "
        "config.deployments instead",
        f"controllers[0].config.bearer_token_file: {tmp_path / 'token'} is empty"]


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8081", "http://localhost:9000/apim", "http://[::1]:80",
                                      "https://gateway.azure-api.net/openai-proxy"])
def test_plain_http_is_allowed_to_loopback_only_and_a_front_may_have_a_path(tmp_path: Path, endpoint: str) -> None:
    assert settings_of(tmp_path, azure(endpoint=endpoint)).controllers[0].settings["endpoint"] == endpoint


def test_the_report_shows_the_deployments_and_never_a_key_or_token(tmp_path: Path) -> None:
    token = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJjb2duaXRpdmUifQ.signature-0123456789"
    write(tmp_path / "token", token)
    settings = settings_of(tmp_path, azure(headers={"X-Team": "header-secret-0123"}),
                           {**azure(api_key=None, bearer_token_file="token", api="v1"), "name": "west"})
    text = render(settings)
    assert KEY not in text and token not in text and "header-secret-0123" not in text
    assert "deployments=gpt-4o: gpt4o-east-prod, text-embedding-3-small: emb-small-east" in text
    assert "headers=X-Team (values redacted)" in text and "api_key=3f9…(redacted) (from controllers[0]" in text
    assert f"credential from bearer token file {tmp_path / 'token'}" in text
    assert repr(settings).count(KEY) == 0


def test_which_endpoints_each_surface_serves(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, azure(), {**azure(api="v1"), "name": "v1"})
    classic, v1 = (build_controller(spec, Transport()) for spec in settings.controllers)
    assert isinstance(classic, AzureController) and isinstance(v1, AzureController)
    assert {e.route for e in ENDPOINTS if classic.supports(e)} == {
        "chat_completions", "completions", "embeddings", "audio_transcriptions", "audio_translations",
        "audio_speech", "images_generations"}
    served = {e.route for e in ENDPOINTS if v1.supports(e)}
    assert {"responses", "responses_get", "chat_completions", "embeddings", "audio_transcriptions"} <= served
    assert not {"moderations", "completions", "conversations"} & served
    # Classic URLs leave the body's model alone; v1 names the deployment in it.
    assert (classic.upstream_model("gpt-4o"), v1.upstream_model("gpt-4o")) == ("gpt-4o", "gpt4o-east-prod")
    assert classic.base_url == ENDPOINT + "/openai?api-version=2024-10-21" and v1.base_url == ENDPOINT + "/openai/v1"
