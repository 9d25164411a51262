"""Config precedence (defaults < TOML < env/flags) and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from callrec.config import ConfigError, Limits, load_config


def test_defaults():
    cfg = load_config()
    assert cfg.listen == "127.0.0.1:50051" and cfg.data_dir == Path("./data")
    assert cfg.clock == "realtime" and cfg.reconnect_grace_s == 30 and cfg.event_retention_h == 24
    assert cfg.default_storage == "local" and cfg.limits == Limits()


def test_toml_then_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[server]\nlisten = "127.0.0.1:6000"\nclock = "media"\nresource_id = "/from/toml"\n'
        '[storage]\ndefault = "archive"\n[storage.targets.archive]\nkind = "s3"\nbucket = "b"\n'
        "[limits]\nmax_recordings = 3\n"
    )
    cfg = load_config({"listen": "127.0.0.1:7000", "clock": None}, toml)
    assert cfg.listen == "127.0.0.1:7000"  # the flag wins
    assert cfg.clock == "media" and cfg.resource_id == "/from/toml"  # None = unset: the file's value stays
    assert cfg.default_storage == "archive" and cfg.storage_targets["archive"]["bucket"] == "b"
    assert cfg.limits.max_recordings == 3


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("listen = ", "not valid TOML"),
        ("[bogus]\nx = 1\n", "unknown keys ['bogus']"),
        ("[limits]\nmax_everything = 1\n", "unknown [limits] keys"),
        ('[storage]\ndefault = "nowhere"\n', "default storage target 'nowhere' is not defined"),
        ('[server]\nclock = "sundial"\n', "clock must be one of realtime, media"),
        ('[server]\nlisten = "nonsense"\n', "listen must be HOST:PORT"),
        ('[server]\nlisten = "0.0.0.0:50051"\n', "pass --insecure"),
    ],
)
def test_bad_config_files(tmp_path, text, fragment):
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config({}, toml)
    assert fragment in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({}, tmp_path / "nope.toml")


def test_insecure_allows_public_bind():
    assert load_config({"listen": "0.0.0.0:50051", "insecure": True}).listen == "0.0.0.0:50051"


def test_env_var_reaches_serve(tmp_path, monkeypatch):
    """typer maps CALLREC_* to flags; a flag beats the env var."""
    from typer.testing import CliRunner

    import callrec.logs
    import callrec.server
    from callrec_client.cli import app

    seen = {}
    monkeypatch.setattr(callrec.server, "run", lambda cfg: seen.setdefault("cfg", cfg))
    # serve would route every later test's logs to the runner's stream, closed after `invoke`
    monkeypatch.setattr(callrec.logs, "configure_logging", lambda *args, **kwargs: None)
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path)],
                           env={"CALLREC_CLOCK": "media", "CALLREC_LISTEN": "127.0.0.1:6001"})
    assert result.exit_code == 0, result.output
    assert seen["cfg"].clock == "media" and seen["cfg"].listen == "127.0.0.1:6001"
    seen.clear()
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path), "--clock", "realtime"],
                           env={"CALLREC_CLOCK": "media"})
    assert result.exit_code == 0 and seen["cfg"].clock == "realtime"


def test_decode_workers_default_follows_the_cores_and_bad_values_name_the_setting(tmp_path, monkeypatch):
    for cores, workers in ((1, 0), (2, 1), (3, 2), (6, 4), (64, 4)):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert load_config().decode_workers == workers
    toml = tmp_path / "c.toml"
    toml.write_text("[server]\ndecode_workers = 2\n")
    assert load_config(None, toml).decode_workers == 2
    assert load_config({"decode_workers": 0}, toml).decode_workers == 0  # the flag wins
    for bad in (-1, 65, "two", True):
        with pytest.raises(ConfigError, match=r"decode_workers must be 0-64 \(0: decode Opus on the event loop\)"):
            load_config({"decode_workers": bad})


def test_the_audio_writer_process_is_on_by_default_and_each_source_can_turn_it_off(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import callrec.logs
    import callrec.server
    from callrec_client.cli import app

    assert load_config().audio_writer_process is True
    toml = tmp_path / "c.toml"
    toml.write_text("[server]\naudio_writer_process = false\n")
    assert load_config(None, toml).audio_writer_process is False
    for bad in ("no", 0, 1):
        with pytest.raises(ConfigError, match=r"audio_writer_process must be true .* or false"):
            load_config({"audio_writer_process": bad})
    seen = {}
    monkeypatch.setattr(callrec.server, "run", lambda cfg: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(callrec.logs, "configure_logging", lambda *args, **kwargs: None)
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path), "--no-audio-writer-process"])
    assert result.exit_code == 0, result.output
    assert seen.pop("cfg").audio_writer_process is False
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path)], env={"CALLREC_AUDIO_WRITER_PROCESS": "false"})
    assert result.exit_code == 0, result.output
    assert seen.pop("cfg").audio_writer_process is False
