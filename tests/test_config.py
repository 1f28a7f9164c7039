"""Configuration: defaults, environment, files, secrets from files, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from igbutton_server.config import DEFAULT_GRAPH_API_VERSION, ConfigError, Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("IGBUTTON_"):
            monkeypatch.delenv(key)


def test_defaults_use_a_current_graph_version_and_header_tokens() -> None:
    settings = Settings.load(sandbox={"enabled": True})
    assert settings.graph.api_version == DEFAULT_GRAPH_API_VERSION
    assert settings.graph.api_version != "v20.0"
    assert settings.graph.token_in == "header"
    assert settings.storage.backend == "sqlite"
    assert settings.rate_limit.per_account_per_second == 100
    assert settings.idempotency.ttl_seconds == 24 * 3600
    assert settings.postbacks.retention_seconds == 7 * 24 * 3600


def test_environment_sets_nested_values_and_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGBUTTON_GRAPH__API_VERSION", "v26.0")
    monkeypatch.setenv("IGBUTTON_ACCOUNTS", '[{"id": "1784", "access_token": "tok-from-env"}]')
    monkeypatch.setenv("IGBUTTON_WEBHOOK__APP_SECRETS", '["s1", "s2"]')
    settings = Settings.load()
    assert settings.graph.api_version == "v26.0"
    assert settings.accounts[0].token() == "tok-from-env"
    assert settings.webhook.secrets() == [b"s1", b"s2"]


def test_secrets_come_from_files(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-from-file\n")
    secret = tmp_path / "secret"
    secret.write_text("app-secret-from-file")
    settings = Settings.load(
        accounts=[{"id": "1784", "access_token_file": str(token)}],
        webhook={"app_secret_files": [str(secret)]},
    )
    assert settings.accounts[0].token() == "tok-from-file"
    assert settings.webhook.secrets() == [b"app-secret-from-file"]


def test_toml_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "igbutton.toml"
    config.write_text(
        '[graph]\napi_version = "v24.0"\ntoken_in = "query"\n'
        '[webhook]\napp_secrets = ["file-secret"]\n'
    )
    monkeypatch.setenv("IGBUTTON_GRAPH__API_VERSION", "v26.0")
    settings = Settings.load(config)
    assert settings.graph.token_in == "query"
    assert settings.graph.api_version == "v26.0"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"graph": {"api_version": "v20.0"}}, "graph.api_version"),
        ({"graph": {"api_version": "latest"}}, "must look like v25.0"),
        ({"accounts": [{"id": "1784"}]}, "access_token or access_token_file is required"),
        ({"accounts": [{"id": "bad id!", "access_token": "x"}]}, "accounts.0.id"),
        ({"rate_limit": {"per_account_per_second": 0}}, "rate_limit.per_account_per_second"),
        ({"grpc": {"listne": "x"}}, "grpc.listne"),
        ({"accounts": [{"id": "1", "access_token_file": "/nonexistent/t"}]}, "cannot read"),
    ],
)
def test_bad_settings_name_the_setting(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(sandbox={"enabled": True}, **overrides)
    assert expected in str(info.value)


def test_webhook_secret_required_outside_the_sandbox() -> None:
    with pytest.raises(ConfigError, match="app_secrets"):
        Settings.load()


def test_secrets_never_appear_in_repr() -> None:
    settings = Settings.load(
        accounts=[{"id": "1784", "access_token": "very-secret-token"}],
        webhook={"app_secrets": ["very-secret-app"]},
    )
    assert "very-secret-token" not in repr(settings)
    assert "very-secret-app" not in repr(settings)


def _run_server(
    tmp_path: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``python -m igbutton_server`` with only ``env`` (and loopback port 0 everywhere, so a
    server that wrongly starts collides with nothing); run() kills it at the timeout."""
    ports = {
        "IGBUTTON_GRPC__LISTEN": "127.0.0.1:0",
        "IGBUTTON_HTTP__PORT": "0",
        "IGBUTTON_WEBHOOK__PORT": "0",
        "IGBUTTON_SANDBOX__PORT": "0",
    }
    return subprocess.run(
        [sys.executable, "-m", "igbutton_server", "--sandbox", *args],
        env={"PATH": "/usr/bin:/bin", **ports, **env},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )


def test_server_exits_2_with_a_clear_message_on_bad_config(tmp_path: Path) -> None:
    result = _run_server(tmp_path, {"IGBUTTON_GRAPH__API_VERSION": "v20.0"})
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "graph.api_version" in result.stderr
    assert "retired" in result.stderr


CALLERS_TOML = '[[callers]]\nname = "billing"\ntoken = "billing-caller-token-5f3a9c"\n'


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # The file with the callers is igbutton.toml; the variable has a typo.
        ("env_file_missing", ["igbuton.toml", "IGBUTTON_CONFIG_FILE", "No such file"]),
        ("flag_file_missing", ["igbuton.toml", "--config", "No such file"]),
        ("env_file_is_a_folder", ["conf.d", "IGBUTTON_CONFIG_FILE", "Is a directory"]),
        ("toml_syntax", ["broken.toml", "IGBUTTON_CONFIG_FILE", "not valid TOML", "line 4"]),
        ("toml_not_utf8", ["latin1.toml", "not UTF-8"]),
        ("env_json", ["IGBUTTON_CALLERS", "not valid JSON"]),
        ("nested_env_json", ["IGBUTTON_WEBHOOK__APP_SECRETS", "not valid JSON"]),
    ],
)
def test_unusable_config_sources_stop_the_start_with_one_line(
    tmp_path: Path, case: str, expected: list[str]
) -> None:
    (tmp_path / "igbutton.toml").write_text(CALLERS_TOML)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "broken.toml").write_text(CALLERS_TOML + "[graph\n")
    (tmp_path / "latin1.toml").write_bytes(b'[graph]\napi_version = "v25.0" # \xe9t\xe9\n')
    env, args = {
        "env_file_missing": ({"IGBUTTON_CONFIG_FILE": "igbuton.toml"}, ()),
        "flag_file_missing": ({}, ("--config", "igbuton.toml")),
        "env_file_is_a_folder": ({"IGBUTTON_CONFIG_FILE": "conf.d"}, ()),
        "toml_syntax": ({"IGBUTTON_CONFIG_FILE": "broken.toml"}, ()),
        "toml_not_utf8": ({"IGBUTTON_CONFIG_FILE": "latin1.toml"}, ()),
        "env_json": ({"IGBUTTON_CALLERS": "[{"}, ()),
        "nested_env_json": ({"IGBUTTON_WEBHOOK__APP_SECRETS": "["}, ()),
    }[case]
    result = _run_server(tmp_path, env, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("igbutton-server: ")
    for text in expected:
        assert text in lines[0]


def test_config_file_named_by_the_environment_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "igbutton.toml"
    config.write_text(CALLERS_TOML)
    monkeypatch.setenv("IGBUTTON_CONFIG_FILE", str(config))
    settings = Settings.load(sandbox={"enabled": True})
    assert [c.name for c in settings.callers] == ["billing"]


def test_config_flag_wins_over_the_environment_and_leaves_it_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    (tmp_path / "a.toml").write_text('[graph]\napi_version = "v24.0"\n')
    (tmp_path / "b.toml").write_text('[graph]\napi_version = "v26.0"\n')
    monkeypatch.setenv("IGBUTTON_CONFIG_FILE", str(tmp_path / "a.toml"))
    settings = Settings.load(tmp_path / "b.toml", sandbox={"enabled": True})
    assert settings.graph.api_version == "v26.0"
    assert os.environ["IGBUTTON_CONFIG_FILE"] == str(tmp_path / "a.toml")
    assert Settings.load(sandbox={"enabled": True}).graph.api_version == "v24.0"
