"""Validation of StartRecording options: the ACS matrix and every field's range."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

from callrec.core.errors import InvalidArgument
from callrec.core.limits import Limits, check_items, check_text
from callrec.core.model import VALID_COMBINATIONS, ChannelType, RecordingOptions

MIN_CHUNK_DURATION = timedelta(seconds=1)
MAX_CHUNK_DURATION = timedelta(hours=4)
MAX_UNMIXED_CHANNELS = 32
EXTERNAL_KINDS = ("s3", "azure_blob")


def describe_valid_combinations() -> str:
    """The four valid combinations, spelled as in the API."""
    return "; ".join(
        f"{ch.value}+{ct.value}+{fmt.value}" for ch, ct, fmt in VALID_COMBINATIONS
    ).replace("audioVideo", "audio_video")


def check_option_sizes(options: RecordingOptions, limits: Limits) -> None:
    """InvalidArgument for any string or list longer than its `[limits]` setting."""
    check_text(options.operation_context, "operation_context", limits.max_operation_context_bytes,
               "max_operation_context_bytes")
    check_text(options.destination, "destination", limits.max_location_bytes, "max_location_bytes")
    if options.external_storage is not None:
        check_text(options.external_storage.container_url, "external_storage.container_url",
                   limits.max_location_bytes, "max_location_bytes")
    ordering = options.audio_channel_participant_ordering
    check_items(ordering, "audio_channel_participant_ordering", limits.max_list_items)
    for pid in ordering:
        check_text(pid, "audio_channel_participant_ordering entry", limits.max_id_bytes, "max_id_bytes")
    check_items(options.channel_affinity, "channel_affinity", limits.max_list_items)
    for pin in options.channel_affinity:
        check_text(pin.participant_id, "channel_affinity.participant_id", limits.max_id_bytes, "max_id_bytes")


def validate_options(
    options: RecordingOptions, known_destinations: Collection[str], limits: Limits | None = None
) -> None:
    """Raise InvalidArgument, naming the field and what is allowed, for any bad option."""
    if limits is not None:
        check_option_sizes(options, limits)
    combo = (options.channel_type, options.content_type, options.format)
    if combo not in VALID_COMBINATIONS:
        raise InvalidArgument(
            f"channel_type={options.channel_type.value}, content_type={options.content_type.value}, "
            f"format={options.format.value} is not a valid combination; valid (channel+content+format): "
            f"{describe_valid_combinations()}"
        )
    if not MIN_CHUNK_DURATION <= options.chunk_max_duration <= MAX_CHUNK_DURATION:
        raise InvalidArgument(
            f"chunk_max_duration must be between 1s and 4h (14400s); got {options.chunk_max_duration.total_seconds()}s"
        )
    if options.chunk_max_bytes < 0:
        raise InvalidArgument("chunk_max_bytes must be >= 0 (0 = no size limit)")
    if not 1 <= options.unmixed_max_channels <= MAX_UNMIXED_CHANNELS:
        raise InvalidArgument(
            f"unmixed_max_channels must be between 1 and {MAX_UNMIXED_CHANNELS}; got {options.unmixed_max_channels}"
        )
    unmixed = options.channel_type is ChannelType.UNMIXED
    if (options.audio_channel_participant_ordering or options.channel_affinity) and not unmixed:
        raise InvalidArgument(
            "audio_channel_participant_ordering and channel_affinity apply to unmixed recordings only; "
            "set channel_type=RECORDING_CHANNEL_TYPE_UNMIXED or drop them"
        )
    ordering = options.audio_channel_participant_ordering
    if any(not pid for pid in ordering):
        raise InvalidArgument("audio_channel_participant_ordering contains an empty participant id")
    if len(set(ordering)) != len(ordering):
        raise InvalidArgument("audio_channel_participant_ordering lists a participant twice")
    channels_seen: set[int] = set()
    for pin in options.channel_affinity:
        if not pin.participant_id:
            raise InvalidArgument("channel_affinity.participant_id is required")
        if not 0 <= pin.channel < options.unmixed_max_channels:
            raise InvalidArgument(
                f"channel_affinity channel {pin.channel} for {pin.participant_id!r} is out of range: "
                f"channels are 0..{options.unmixed_max_channels - 1} "
                f"(unmixed_max_channels={options.unmixed_max_channels})"
            )
        if pin.channel in channels_seen:
            raise InvalidArgument(f"channel_affinity pins two participants to channel {pin.channel}")
        channels_seen.add(pin.channel)
    if options.external_storage is not None:
        ext = options.external_storage
        if ext.kind not in EXTERNAL_KINDS:
            raise InvalidArgument(
                "external_storage.kind must be EXTERNAL_STORAGE_KIND_S3 or EXTERNAL_STORAGE_KIND_AZURE_BLOB"
            )
        if "://" not in ext.container_url:
            raise InvalidArgument(
                "external_storage.container_url must be a URL, e.g. s3://bucket/prefix or "
                "https://account.blob.core.windows.net/container?<sas>"
            )
    elif options.destination and options.destination not in known_destinations:
        raise InvalidArgument(
            f"destination {options.destination!r} is not a configured storage target; "
            f"configured: {', '.join(sorted(known_destinations))}"
        )
