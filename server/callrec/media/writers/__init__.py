"""Audio writers: mixed wav, mixed mp3 and unmixed wav, each writing into the spool as media comes.

`writer_factory_for(options)` picks the factory an `AudioRecording` needs.
"""

from __future__ import annotations

from callrec.core.model import ChannelType, ContentType, Format, RecordingOptions
from callrec.media.writers.base import AudioWriter, AudioWriterFactory
from callrec.media.writers.mp3 import Mp3Writer, Mp3WriterFactory, PyAVMp3Writer
from callrec.media.writers.unmixed_wav import UnmixedWavWriter, UnmixedWavWriterFactory
from callrec.media.writers.wav import WavWriter, WavWriterFactory

__all__ = [
    "AudioWriter",
    "AudioWriterFactory",
    "Mp3Writer",
    "Mp3WriterFactory",
    "PyAVMp3Writer",
    "UnmixedWavWriter",
    "UnmixedWavWriterFactory",
    "WavWriter",
    "WavWriterFactory",
    "writer_factory_for",
]


def writer_factory_for(options: RecordingOptions) -> AudioWriterFactory:
    """The audio writer factory of an audio-only recording; ValueError for mp4 / invalid combinations."""
    combination = (options.channel_type, options.content_type, options.format)
    if combination == (ChannelType.MIXED, ContentType.AUDIO, Format.WAV):
        return WavWriterFactory()
    if combination == (ChannelType.MIXED, ContentType.AUDIO, Format.MP3):
        return Mp3WriterFactory()
    if combination == (ChannelType.UNMIXED, ContentType.AUDIO, Format.WAV):
        return UnmixedWavWriterFactory()
    raise ValueError(
        f"no audio writer for {options.channel_type}+{options.content_type}+{options.format}; "
        "mixed+audioVideo+mp4 is written by the video compositor"
    )
