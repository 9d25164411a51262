"""`callrec events`: print the retained log, optionally follow it."""

from __future__ import annotations

import asyncio

import typer

from callrec_client.client import AsyncCallrecClient, TlsOptions

#: With --no-follow, stop once the stream has been quiet this long (the backlog is sent at once).
IDLE_S = 0.5


async def print_events(
    server: str, follow: bool, after: int | None, types: list[str], call: str, recording: str, as_json: bool,
    token: str = "", tls: TlsOptions | None = None,
) -> None:
    """Stream events to stdout: `seq type subject` lines, or ACS JSON with --json."""
    async with AsyncCallrecClient(server, token=token, tls=tls) as client:
        stream = client.subscribe_events(
            event_types=types, server_call_id=call, recording_id=recording, after_sequence=after,
            from_oldest=after is None,
        )
        while True:
            try:
                event = await (stream.__anext__() if follow else asyncio.wait_for(stream.__anext__(), IDLE_S))
            except (TimeoutError, StopAsyncIteration):
                break
            if as_json:
                typer.echo(event.json)
            else:
                when = event.event_time.ToDatetime().strftime("%H:%M:%S")
                typer.echo(f"{event.sequence:>6}  {when}  {event.event_type.rsplit('.', 1)[-1]:<28}  {event.subject}")
        await stream.aclose()
