"""The forwarder's TOML configuration: the happy path and every error, each naming its key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from lb.config import Backend, ForwarderConfig, load_config, parse_config
from quicvoice.errors import ConfigurationError
from quicvoice.quiclb import Algorithm
from quicvoice.settings import BACKEND_KEYS, format_address, parse_address

ROOT = Path(__file__).resolve().parents[2]
KEY = "8f95f09245765f80256934e50c66207f"
GOOD = f"""
listen = "127.0.0.1:4433"
backend_listen = "127.0.0.1:4434"
reset_key = "{"ab" * 32}"
metrics = "127.0.0.1:9100"
log_level = "debug"

[[configs]]
id = 0
server_id_len = 4
nonce_len = 12
key = "{KEY}"

[[configs]]
id = 1
server_id_len = 4
nonce_len = 8

[[backends]]
server_id = "0a000001"
address = "127.0.0.1:4501"

[[backends]]
server_id = "0a000002"
address = "127.0.0.1:4502"
down = true
"""


def test_a_full_config_parses() -> None:
    config = parse_config(GOOD)
    assert config.listen == ("127.0.0.1", 4433)
    assert config.backend_listen == ("127.0.0.1", 4434)
    assert [c.algorithm for c in config.configs] == [Algorithm.SINGLE_PASS, Algorithm.PLAINTEXT]
    assert config.backends == (
        Backend(bytes.fromhex("0a000001"), ("127.0.0.1", 4501)),
        Backend(bytes.fromhex("0a000002"), ("127.0.0.1", 4502), down=True),
    )
    assert config.reset_key == bytes.fromhex("ab" * 32)
    assert config.metrics == ("127.0.0.1", 9100)
    assert config.log_level == "debug"


def test_the_example_file_parses() -> None:
    config = load_config(ROOT / "examples" / "lb.toml")
    assert len(config.backends) == 3


def test_defaults() -> None:
    text = "\n".join(
        line
        for line in GOOD.splitlines()
        if not line.startswith(("reset_key", "metrics", "log_level"))
    )
    config = parse_config(text)
    assert config.reset_key is None and config.metrics is None and config.log_level == "info"


def test_backend_keys_are_tolerated_so_one_file_serves_both() -> None:
    extra = (
        'server_id = "0a000001"\nforwarder = "127.0.0.1:4434"\ncertificate = "c.pem"\n'
        'private_key = "k.pem"\nsession_store = "memory"\n'
    )
    tables = "\n".join(f"[{name}]\nanything = 1" for name in ("serve", "session", "store"))
    config = parse_config(extra + GOOD + tables)
    assert len(config.backends) == 2
    assert {"server_id", "forwarder", "certificate", "private_key", "session_store"} <= BACKEND_KEYS


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("listen = '[::1]:443'", ("::1", 443)),
        ("listen = '[0:0::1]:443'", ("::1", 443)),
        ("listen = '10.1.2.3:65535'", ("10.1.2.3", 65535)),
    ],
)
def test_addresses(text: str, where: tuple[str, int]) -> None:
    value = text.split("=", 1)[1].strip().strip("'")
    assert parse_address(value, "listen") == where
    assert parse_address(format_address(where), "listen") == where


def replace(line_start: str, new: str | None, text: str = GOOD) -> str:
    """GOOD with the first line starting with ``line_start`` replaced (or removed)."""
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(line_start))
    if new is None:
        del lines[index]
    else:
        lines[index] = new
    return "\n".join(lines)


def second_backend(line_start: str, new: str | None) -> str:
    head, _, tail = GOOD.rpartition("[[backends]]")
    return head + "[[backends]]" + replace(line_start, new, tail)


ERRORS = [
    ("not toml", "listen = ", "not valid TOML"),
    ("unknown key", GOOD + "\nlisten_port = 4", "listen_port: unknown key"),
    ("missing listen", replace("listen =", None), "listen: missing"),
    ("missing backend_listen", replace("backend_listen", None), "backend_listen: missing"),
    ("listen not a string", replace("listen =", "listen = 4433"), "listen: must be a string"),
    ("listen no port", replace("listen =", 'listen = "127.0.0.1"'), "listen: "),
    ("listen name", replace("listen =", 'listen = "localhost:4433"'), "listen: 'localhost'"),
    ("listen bad v4", replace("listen =", 'listen = "127.0.0.300:1"'), "listen: '127.0.0.300'"),
    ("listen v6 no brackets", replace("listen =", 'listen = "::1:443"'), "listen: write IPv6"),
    ("listen bad v6", replace("listen =", 'listen = "[::g]:443"'), "listen: '::g'"),
    ("listen port 0", replace("listen =", 'listen = "127.0.0.1:0"'), "listen: port 0"),
    ("listen port big", replace("listen =", 'listen = "127.0.0.1:65536"'), "listen: port 65536"),
    ("listen port text", replace("listen =", 'listen = "127.0.0.1:x"'), "listen: port 'x'"),
    (
        "same listen",
        replace("backend_listen", 'backend_listen = "127.0.0.1:4433"'),
        "backend_listen: must differ",
    ),
    (
        "reset_key hex",
        replace("reset_key", 'reset_key = "zz"'),
        "reset_key: not hex (2 characters; invalid character at position 0)",
    ),
    ("reset_key short", replace("reset_key", 'reset_key = "abcd"'), "reset_key: must be at least"),
    ("reset_key type", replace("reset_key", "reset_key = 5"), "reset_key: must be a string"),
    ("metrics", replace("metrics", 'metrics = "nowhere"'), "metrics: "),
    ("log_level", replace("log_level", 'log_level = "loud"'), "log_level: must be one of"),
    ("configs missing", GOOD.replace("[[configs]]", "[[zconfigs]]"), "zconfigs: unknown key"),
    ("config unknown key", replace("nonce_len = 12", "nonce = 12"), "configs[0].nonce: unknown"),
    ("config id range", replace("id = 1", "id = 7"), "configs[1].id:"),
    ("config id twice", replace("id = 1", "id = 0"), "configs[1].id: config 0 is defined twice"),
    ("config key", replace("key =", 'key = "00"'), "configs[0].key: must be 32 hex digits"),
    ("config lengths", replace("nonce_len = 8", "nonce_len = 16"), "configs[1]."),
    ("backend unknown key", second_backend("down", "weight = 2"), "backends[1].weight: unknown"),
    ("backend no id", second_backend("server_id", None), "backends[1].server_id: missing"),
    ("backend no address", second_backend("address", None), "backends[1].address: missing"),
    ("backend id hex", second_backend("server_id", 'server_id = "xyz"'), "backends[1].server_id:"),
    (
        "backend id length",
        second_backend("server_id", 'server_id = "0a00000203"'),
        "backends[1].server_id: 5 octets, but config 0 has server_id_len = 4",
    ),
    (
        "backend id twice",
        second_backend("server_id", 'server_id = "0a000001"'),
        "backends[1].server_id: 0a000001 is already backends[0]",
    ),
    (
        "backend address twice",
        second_backend("address", 'address = "127.0.0.1:4501"'),
        "backends[1].address: 127.0.0.1:4501 is already backends[0]",
    ),
    (
        "backend is the forwarder",
        second_backend("address", 'address = "127.0.0.1:4434"'),
        "backends[1].address: is the forwarder's own address",
    ),
    (
        "backend family",
        second_backend("address", 'address = "[::1]:4502"'),
        "backends[1].address: IPv4 backends only",
    ),
    ("backend port", second_backend("address", 'address = "127.0.0.1:0"'), "backends[1].address:"),
    ("backend down type", second_backend("down", 'down = "yes"'), "backends[1].down: must be"),
    ("no backends", GOOD.split("[[backends]]")[0], "backends: missing"),
]


@pytest.mark.parametrize(("name", "text", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_the_key(name: str, text: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_config(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("configs", 3, "configs: must be an array of tables"),
        ("configs", [3], "configs[0]: must be a table"),
        ("backends", "x", "backends: must be an array of tables"),
        ("backends", ["x"], "backends[0]: must be a table"),
    ],
)
def test_wrong_shapes(key: str, value: object, message: str) -> None:
    table = tomllib.loads(GOOD)
    table[key] = value
    with pytest.raises(ConfigurationError) as caught:
        ForwarderConfig.from_mapping(table)
    assert str(caught.value).startswith(message)


def test_empty_arrays_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="^configs: at least one"):
        parse_config(
            GOOD.split("[[configs]]")[0] + "configs = []\n[[backends]]\n"
            'server_id = "0a000001"\naddress = "127.0.0.1:4501"\n'
        )
    with pytest.raises(ConfigurationError, match="^backends: at least one"):
        ForwarderConfig(
            listen=("127.0.0.1", 1),
            backend_listen=("127.0.0.1", 2),
            configs=parse_config(GOOD).configs,
            backends=(),
        )


def test_server_ids_must_fit_every_config() -> None:
    text = GOOD.replace("id = 1\nserver_id_len = 4", "id = 1\nserver_id_len = 3")
    with pytest.raises(
        ConfigurationError, match=r"^backends\[0\].server_id: 4 octets, but config 1"
    ):
        parse_config(text)


def test_load_config_prefixes_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "lb.toml"
    path.write_text(replace("listen =", 'listen = "127.0.0.1:99999"'))
    with pytest.raises(ConfigurationError, match=r"lb.toml: listen: port 99999"):
        load_config(path)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
