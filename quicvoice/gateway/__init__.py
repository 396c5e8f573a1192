"""A telephony gateway: phone calls from a carrier's media-stream WebSocket (Twilio Media
Streams) bridged to quicvoice sessions (``quicvoice gateway``, ``specs/gateway.md``).

- ``events``, ``twilio``: the carrier's protocol, sans-I/O (text frames in, events out);
- ``line``: pacing and the carrier's playout model, marks and ``clear`` (sans-I/O);
- ``transcode``: µ-law straight through, or to and from the session's codec (sans-I/O);
- ``config``: :class:`~quicvoice.gateway.config.GatewayConfig`;
- ``bridge``: one call, carrier WebSocket to ``quicvoice.connect`` (asyncio);
- ``server``: the WebSocket endpoint (the only module importing ``websockets``).

Importing this package loads none of them.
"""
