"""Tests of the optional framework adapters (quicvoice.integrations)."""
