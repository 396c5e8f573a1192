"""Adapters that run voice-agent frameworks over quicvoice sessions."""
