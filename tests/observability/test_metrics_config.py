"""The backend's ``metrics`` key: any value is an address or a ConfigurationError naming it."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from quicvoice.asyncio.config import BackendConfig
from quicvoice.errors import ConfigurationError

values = (
    st.text(max_size=60)
    | st.builds(lambda host, port: f"{host}:{port}", st.text(max_size=20), st.integers(-5, 70000))
    | st.integers()
    | st.none()
    | st.lists(st.integers(), max_size=2)
)


@given(values)
def test_any_metrics_value_is_an_address_or_an_error_naming_the_key(value: object) -> None:
    try:
        config = BackendConfig.from_mapping({"metrics": value})
    except ConfigurationError as error:
        assert str(error).startswith("metrics: ")
        return
    assert config.metrics is not None
    host, port = config.metrics
    ipaddress.ip_address(host)
    assert 0 <= port <= 65535
