"""Strict configuration: ``node.toml`` and the coalition manifest are read into a typed
model that refuses unknown keys (naming the nearest known one), wrong types, values out
of range and missing keys, each message naming the file and the key path; defaults and
environment overrides are those README "Configuration" documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from coalition.errors import InvalidArgument
from coalition.node.config import IntegrityConfig, load_config
from coalition.node.limits import Limits
from coalition.node.manifest import Manifest
from coalition.node.strict_toml import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = '[program]\nid = "skyair"\n'
ENVIRONMENT = (
    "COALITION_DATABASE_URL",
    "COALITION_GRPC_ADDRESS",
    "COALITION_HTTP_ADDRESS",
    "COALITION_PARTNER_GRPC_ADDRESS",
    "COALITION_MANIFEST",
)


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def node_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def refusal(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: "), "the message names the file"
    return caught.value


# --- defaults and overrides -----------------------------------------------------------


def test_a_minimal_file_takes_the_documented_defaults(tmp_path: Path) -> None:
    config = load_config(node_toml(tmp_path, MINIMAL))
    assert config.name == "skyair"
    assert config.database_url == f"sqlite:///{tmp_path}/data/skyair.db"
    assert config.signing_key_path == tmp_path / "keys" / "ledger.pem"
    assert config.account_secret_path == tmp_path / "keys" / "account-secret"
    assert config.api_keys_path == tmp_path / "keys" / "api-keys.toml"
    assert (config.grpc_address, config.http_address) == ("127.0.0.1:50051", "127.0.0.1:8080")
    assert (config.sealer.max_entries, config.sealer.max_delay_ms) == (1000, 200)
    assert config.sqlite_synchronous == "FULL" and config.expiry_interval_s == 60.0
    assert config.coalition is None and config.signing_key_password is None


def test_the_limits_table_sets_the_named_limits(tmp_path: Path) -> None:
    assert load_config(node_toml(tmp_path, MINIMAL)).limits == Limits()
    text = MINIMAL + (
        "[limits]\nmax_streams = 4\nmax_streams_per_caller = 2\n"
        "requests_per_second = 50.5\nburst = 100\n"
    )
    assert load_config(node_toml(tmp_path, text)).limits == Limits(4, 2, 50.5, 100)
    zero = MINIMAL + "[limits]\nmax_streams = 0\n"
    assert "limits.max_streams" in str(refusal(node_toml(tmp_path, zero)))


def test_the_tls_table_turns_on_tls_for_the_member_ports(tmp_path: Path) -> None:
    assert load_config(node_toml(tmp_path, MINIMAL)).tls is None, "off by default"
    text = MINIMAL + '[tls]\ncert = "tls/api.pem"\nkey = "/etc/coalition/api.key"\n'
    tls = load_config(node_toml(tmp_path, text)).tls
    assert tls is not None
    assert (tls.cert_path, tls.key_path) == (
        tmp_path / "tls/api.pem",
        Path("/etc/coalition/api.key"),
    )
    no_key = MINIMAL + '[tls]\ncert = "tls/api.pem"\n'
    assert "missing the required key 'tls.key'" in str(refusal(node_toml(tmp_path, no_key)))


def test_the_integrity_table_sets_the_start_check_and_the_scrub(tmp_path: Path) -> None:
    documented = IntegrityConfig(32, 2000.0, 3600.0)  # README "Configuration"
    assert load_config(node_toml(tmp_path, MINIMAL)).integrity == documented
    text = MINIMAL + (
        "[integrity]\nverify_at_start_blocks = 0\nscrub_entries_per_second = 0\n"
        "scrub_pause_s = 60\n"
    )
    assert load_config(node_toml(tmp_path, text)).integrity == IntegrityConfig(0, 0.0, 60.0)
    negative = MINIMAL + "[integrity]\nscrub_entries_per_second = -1\n"
    assert "integrity.scrub_entries_per_second must be at least 0" in str(
        refusal(node_toml(tmp_path, negative))
    )
    misspelt = MINIMAL + "[integrity]\nverify_at_start = 5\n"
    assert "verify_at_start_blocks" in str(refusal(node_toml(tmp_path, misspelt)))


def test_the_demo_brands_load_as_shipped() -> None:
    for brand in ("skyair", "staybright", "beanhouse"):
        config = load_config(ROOT / "nodes" / brand / "node.toml")
        assert config.program == brand and config.coalition is not None
    assert len(Manifest.load(ROOT / "nodes" / "coalition.toml").partners) == 3


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = node_toml(tmp_path, MINIMAL + '[node]\nsqlite_synchronous = "normal"\n')
    monkeypatch.setenv("COALITION_DATABASE_URL", "postgresql://db/points")
    monkeypatch.setenv("COALITION_GRPC_ADDRESS", "0.0.0.0:50051")
    monkeypatch.setenv("COALITION_HTTP_ADDRESS", "0.0.0.0:8080")
    config = load_config(path)
    assert config.database_url == "postgresql://db/points"
    assert (config.grpc_address, config.http_address) == ("0.0.0.0:50051", "0.0.0.0:8080")
    assert config.sqlite_synchronous == "NORMAL"
    monkeypatch.setenv("COALITION_GRPC_ADDRESS", "nowhere")
    with pytest.raises(InvalidArgument, match="COALITION_GRPC_ADDRESS: bad address 'nowhere'"):
        load_config(path)


# --- node.toml refusals ---------------------------------------------------------------


def test_a_misspelt_database_key_is_refused_with_the_nearest_key(tmp_path: Path) -> None:
    error = refusal(node_toml(tmp_path, MINIMAL + '[node]\ndatabse = "sqlite:///x.db"\n'))
    assert "unknown key 'node.databse' in [node] (did you mean 'database'?)" in str(error)
    assert error.key == "node.databse"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[programme]\nid = "skyair"\n', "unknown key 'programme' in the top level (did you mean"),
        ("[sealer]\nmax_entires = 10\n", "'sealer.max_entires' in [sealer] (did you mean 'max_en"),
        ('[coalition]\nmanifest = "m.toml"\nwitnes = true\n', "(did you mean 'witness'?)"),
        ('[rules.tiers]\nwindw = "30d"\n', "'rules.tiers.windw' in [rules.tiers] (did you mean"),
        ("[node]\nzzz = 1\n", "unknown key 'node.zzz' in [node]; known keys: database,"),
    ],
)
def test_unknown_keys_are_refused(tmp_path: Path, text: str, message: str) -> None:
    assert message in str(refusal(node_toml(tmp_path, MINIMAL + text)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sealer]\nmax_entries = true", "sealer.max_entries must be an integer, not a boolean"),
        ('[sealer]\nmax_delay_ms = "200"', "sealer.max_delay_ms must be an integer, not a string"),
        ("[sealer]\nmax_delay_ms = 2.5", "sealer.max_delay_ms must be an integer, not a float"),
        ('[node]\nexpiry_interval_s = "60"', "node.expiry_interval_s must be a number, not a str"),
        ("[node]\ngrpc = 50051", "node.grpc must be a string, not an integer (50051)"),
        ("[rules]\ntiers = 1", "rules.tiers must be a table, not an integer"),
        ('[coalition]\nmanifest = "m"\nwitness = "yes"', "coalition.witness must be true or fal"),
        ("[rules.categories]\nflights = 1.5", "rules.categories.flights must be a string or an in"),
        ("[rules]\nrewards = [1]", "rules.rewards must be a table, not an array"),
    ],
)
def test_wrong_types_are_refused(tmp_path: Path, text: str, message: str) -> None:
    assert message in str(refusal(node_toml(tmp_path, MINIMAL + text + "\n")))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sealer]\nmax_entries = 0", "sealer.max_entries must be at least 1 (it is 0)"),
        ("[sealer]\nmax_delay_ms = -5", "sealer.max_delay_ms must be at least 1 (it is -5)"),
        ("[node]\nexpiry_interval_s = 0", "node.expiry_interval_s must be greater than 0"),
        ('[node]\nhttp = "127.0.0.1:70000"', "node.http: bad address '127.0.0.1:70000'"),
        ('[node]\nsqlite_synchronous = "fast"', "node.sqlite_synchronous must be one of OFF"),
        ('[node]\ndatabase = ""', "node.database must not be empty"),
        ('[coalition]\nmanifest = "m"\nabort_after_s = -1', "coalition.abort_after_s must be gr"),
        ("[rules]\nminor_units = 0", "rules.minor_units must be at least 1"),
        ('[rules]\nholding_period = "soon"', "rules.holding_period: bad duration 'soon'"),
        ("[rules.rewards]\nsignup = 0", "rules.rewards.signup must be at least 1"),
        (
            '[[rules.tiers.levels]]\nname = "a"\nthreshold = -1\nmultiplier = "1"',
            "rules.tiers.levels[0].threshold must be at least 0 (it is -1)",
        ),
    ],
)
def test_values_out_of_range_are_refused(tmp_path: Path, text: str, message: str) -> None:
    assert message in str(refusal(node_toml(tmp_path, MINIMAL + text + "\n")))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[node]\ndatabase = "x"\n', "missing the required table [program]"),
        ('[program]\nname = "SkyAir"\n', "missing the required key 'program.id'"),
        (MINIMAL + "[coalition]\nwitness = false\n", "missing the required key 'coalition.man"),
        (
            MINIMAL + '[[rules.promotions]]\nname = "x"\nmultiplier = "2"\n',
            "missing the required key 'rules.promotions[0].start'",
        ),
        ('[program]\nid = "Sky Air"\n', "bad program.id 'Sky Air'"),
    ],
)
def test_missing_or_malformed_required_keys(tmp_path: Path, text: str, message: str) -> None:
    assert message in str(refusal(node_toml(tmp_path, text)))


# --- manifest refusals ----------------------------------------------------------------


def demo_manifest(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "nodes" / "coalition.toml").read_text()
    assert old in text
    path = tmp_path / "coalition.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "witness_quorum = 2",
            "witness_qourum = 2",
            "unknown key 'coalition.witness_qourum' in [coalition] (did you mean 'witness_quorum'",
        ),
        (
            'public_key = "skyair',
            'publc_key = "skyair',
            "unknown key 'partners[0].publc_key' in [partners[0]] (did you mean 'public_key'?)",
        ),
        ("[[credit_limits]]", "[[credit_limit]]", "(did you mean 'credit_limits'?)"),
        ("witness_quorum = 2", "witness_quorum = true", "witness_quorum must be an integer, not"),
        ("limit_minor = 5000000", "limit_minor = 5e6", "limit_minor must be an integer, not a fl"),
        ("witness_quorum = 2", "witness_quorum = 3", "coalition.witness_quorum must be in [0, 2]"),
        ("witness_quorum = 2", "witness_quorum = -1", "witness_quorum must be at least 0"),
        ('http = "127.0.0.1:8081"', 'http = "127.0.0.1:0"', "partners[0].http must be HOST:PORT"),
        ('currency = "EUR"', "", "missing the required key 'partners[0].currency'"),
    ],
)
def test_bad_manifests_name_the_file_and_key(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = demo_manifest(tmp_path, old, new)
    with pytest.raises(ConfigError) as caught:
        Manifest.load(path)
    assert str(caught.value).startswith(f"{path.resolve()}: ")
    assert message in str(caught.value)
