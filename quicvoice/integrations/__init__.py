"""Adapters that run voice-agent frameworks over quicvoice sessions (optional extras).

Each adapter lives in its own subpackage and needs its extra installed, e.g.
``pip install 'quicvoice[pipecat]'`` for :mod:`quicvoice.integrations.pipecat` or
``'quicvoice[livekit]'`` for :mod:`quicvoice.integrations.livekit`. Importing this package
itself imports no framework. Design: ``specs/integrations.md``.
"""
