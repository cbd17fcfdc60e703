"""Settings of `devloop up`: flag > environment > Settings document > default, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from devloop.errors import ConfigError
from devloop.settings import Settings, from_document, is_settings_document, settle

DOC = {"apiVersion": "devloop.dev/v1alpha1", "kind": "Settings"}


def test_a_flag_beats_the_environment_which_beats_the_document_which_beats_the_default() -> None:
    document = from_document({**DOC, "debounceMs": 40, "app": "doc", "namespace": "doc"}, "f")
    environ = {"DEVLOOP_DEBOUNCE_MS": "60", "DEVLOOP_APP": "env"}
    settings = settle({"app": "flag", "namespace": None}, [document], environ)
    assert (settings.app, settings.debounce_ms, settings.namespace) == ("flag", 60, "doc")
    assert settings.max_wait_ms == Settings.max_wait_ms


def test_an_unknown_setting_names_the_document_and_the_key_and_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        from_document({**DOC, "debounce": 10}, "config/devloop.yml, document 1")
    message = str(raised.value)
    assert message.startswith("config/devloop.yml, document 1: debounce: unknown setting")
    assert "debounceMs" in message


def test_a_setting_of_the_wrong_type_says_what_it_expected() -> None:
    with pytest.raises(ConfigError, match=r"f: buildConcurrency: expected an integer, got 'four'"):
        from_document({**DOC, "buildConcurrency": "four"}, "f")
    with pytest.raises(ConfigError, match="expected true or false"):
        from_document({**DOC, "cleanup": "yes"}, "f")


def test_a_bad_environment_number_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="DEVLOOP_DEBOUNCE_MS: not a number: 'soon'"):
        settle({}, [], {"DEVLOOP_DEBOUNCE_MS": "soon"})


def test_only_the_settings_kind_of_our_group_is_a_settings_document() -> None:
    assert is_settings_document(DOC)
    assert not is_settings_document({**DOC, "kind": "Config"})
    assert not is_settings_document({"apiVersion": "v1", "kind": "Settings"})


def test_auto_target_is_docker_without_any_kubeconfig_and_kubernetes_with_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings().resolved_target({}) == "docker"
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("apiVersion: v1\n")
    assert Settings().resolved_target({"KUBECONFIG": str(kubeconfig)}) == "kubernetes"
    assert Settings(context="kind-dev").resolved_target({}) == "kubernetes"
    assert Settings(target="docker", kubeconfig=str(kubeconfig)).resolved_target({}) == "docker"


def test_resolve_never_outputs_a_settings_document() -> None:
    import io

    from devloop.kbld.documents import read_inputs
    from devloop.kbld.pipeline import find

    stream = "apiVersion: devloop.dev/v1alpha1\nkind: Settings\napp: x\n---\nkind: Pod\n"
    found = find(read_inputs(["-"], io.StringIO(stream)))
    assert [doc.data["kind"] for doc in found.documents] == ["Pod"]
    assert [doc.data["app"] for doc in found.settings] == ["x"]


def test_logs_and_port_forwards_are_on_unless_a_flag_or_the_document_turns_them_off() -> None:
    from devloop.cli import build_parser
    from devloop.cli.up import flags_of

    assert (Settings.logs, Settings.port_forward) == (True, True)
    document = from_document({**DOC, "logs": False, "portForward": False}, "f")
    assert settle({}, [document], {}).logs is False
    assert settle({}, [document], {}).port_forward is False
    args = build_parser().parse_args(["up", "--logs=false", "--no-port-forward"])
    settings = settle(flags_of(args), [], {})
    assert (settings.logs, settings.port_forward) == (False, False)
    assert settle(flags_of(build_parser().parse_args(["up"])), [], {}).logs is True
