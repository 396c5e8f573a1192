"""Tests of quicvoice.integrations.pipecat with a real pipecat-ai."""
