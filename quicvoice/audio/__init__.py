"""Audio for voice sessions: frames, G.711, resampling, Opus, jitter buffer, codec negotiation.

Pure code: no clocks, sockets, asyncio or QUIC. Imports only the standard library,
numpy and ``opuslib_next``. See ``specs/audio.md`` for the design and measurements.
"""

from quicvoice.audio.codecs import (
    DEFAULT_CODECS,
    L16_16K,
    L16_24K,
    L16_48K,
    OPUS_48K,
    PCMA_8K,
    PCMU_8K,
    AudioCodec,
    CodecSpec,
    G711Codec,
    L16Codec,
    OpusCodec,
    Transcoder,
    make_codec,
    negotiate,
)
from quicvoice.audio.conceal import RepeatConcealer
from quicvoice.audio.frames import AudioFrame, check_pcm, pcm_from_float, pcm_to_float
from quicvoice.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from quicvoice.audio.jitter import (
    FrameDecoder,
    JitterBuffer,
    JitterBufferConfig,
    JitterBufferStats,
    PlayoutFrame,
    PlayoutKind,
)
from quicvoice.audio.opus import OpusConfig, OpusDecoder, OpusEncoder
from quicvoice.audio.pcm import EncodedFrame, PcmDecoder, PcmEncoder, PcmFrame
from quicvoice.audio.quality import (
    Alignment,
    PlayoutRecorder,
    PlayoutReport,
    align,
    codec_round_trip,
    encode_stream,
    estimate_lag,
    resample_signal,
)
from quicvoice.audio.resample import FilterDesign, Resampler, design_filter
from quicvoice.errors import CodecError

__all__ = [
    "DEFAULT_CODECS",
    "L16_16K",
    "L16_24K",
    "L16_48K",
    "OPUS_48K",
    "PCMA_8K",
    "PCMU_8K",
    "Alignment",
    "AudioCodec",
    "AudioFrame",
    "CodecError",
    "CodecSpec",
    "EncodedFrame",
    "FilterDesign",
    "FrameDecoder",
    "G711Codec",
    "JitterBuffer",
    "JitterBufferConfig",
    "JitterBufferStats",
    "L16Codec",
    "OpusCodec",
    "OpusConfig",
    "OpusDecoder",
    "OpusEncoder",
    "PcmDecoder",
    "PcmEncoder",
    "PcmFrame",
    "PlayoutFrame",
    "PlayoutKind",
    "PlayoutRecorder",
    "PlayoutReport",
    "RepeatConcealer",
    "Resampler",
    "Transcoder",
    "alaw_decode",
    "alaw_encode",
    "align",
    "check_pcm",
    "codec_round_trip",
    "design_filter",
    "encode_stream",
    "estimate_lag",
    "make_codec",
    "negotiate",
    "pcm_from_float",
    "pcm_to_float",
    "resample_signal",
    "ulaw_decode",
    "ulaw_encode",
]
