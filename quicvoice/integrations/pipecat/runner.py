"""``pipeline_app(build)``: a :class:`quicvoice.App` that runs a Pipecat pipeline per call.

``quicvoice serve --app mybot:app`` with ``app = pipeline_app(build)`` calls
``build(transport, session)`` for each session (sync or async) and runs what it returns,
a ``Pipeline`` or a ``PipelineWorker``, until the pipeline ends (the call is then closed)
or the call ends (the pipeline is then cancelled).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from pipecat.pipeline.base_pipeline import BasePipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner

from ...app import App, Session
from ...auth import AcceptHook
from .transport import QuicVoiceParams, QuicVoiceTransport

Built = BasePipeline | PipelineWorker
Build = Callable[[QuicVoiceTransport, Session], Built | Awaitable[Built]]
"""``build(transport, session) -> Pipeline | PipelineWorker`` (or a coroutine of one)."""

#: How long a cancelled pipeline may take to wind down after its call ended, in seconds.
CANCEL_GRACE_SECONDS = 5.0


def pipeline_app(
    build: Build,
    *,
    sample_rate: int = 16000,
    params: QuicVoiceParams | None = None,
    accept: AcceptHook | None = None,
    **app_options: Any,
) -> App:
    """An :class:`~quicvoice.App` running ``build(transport, session)``'s pipeline per call.

    ``sample_rate`` is the PCM rate between quicvoice and the transport, and the rate of
    both directions of a bare ``Pipeline`` (a ``PipelineWorker`` keeps its own rates; the
    transport converts). ``params`` configure every call's transport; ``accept`` and
    ``app_options`` (``audio_buffer_ms``, ``turn_buffer_ms``...) go to the ``App``.
    """
    if not callable(build):
        raise TypeError(f"build must be callable, not {type(build).__name__}")

    async def run_pipeline(session: Session) -> None:
        transport = QuicVoiceTransport(session, params)
        built = build(transport, session)
        if inspect.isawaitable(built):
            built = await built
        worker = _worker(built, sample_rate)
        for observer in transport.observers:
            worker.add_observer(observer)
        await run_until_either_ends(worker, transport)

    return App(run_pipeline, sample_rate=sample_rate, accept=accept, **app_options)


def _worker(built: object, sample_rate: int) -> PipelineWorker:
    if isinstance(built, PipelineWorker):
        return built
    if isinstance(built, BasePipeline):
        return PipelineWorker(
            built,
            params=PipelineParams(
                audio_in_sample_rate=sample_rate, audio_out_sample_rate=sample_rate
            ),
            enable_rtvi=False,
            idle_timeout_secs=None,
        )
    raise TypeError(
        f"build() must return a pipecat Pipeline or PipelineWorker, not {type(built).__name__}"
    )


async def run_until_either_ends(worker: PipelineWorker, transport: QuicVoiceTransport) -> None:
    """Run ``worker`` until it ends, or cancel it when ``transport``'s call ends first.

    When this coroutine is itself cancelled (the server is closing), the pipeline is
    cancelled too, within ``CANCEL_GRACE_SECONDS``.
    """
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    loop = asyncio.get_running_loop()
    running = loop.create_task(runner.run())
    closed = loop.create_task(transport.wait_closed())
    try:
        await asyncio.wait({running, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        if not running.done():
            await _cancel(worker, running)
    await running


async def _cancel(worker: PipelineWorker, running: asyncio.Task[None]) -> None:
    """Cancel the pipeline and wait (bounded) for its runner to finish."""
    try:
        await asyncio.wait_for(worker.cancel(reason="the call ended"), CANCEL_GRACE_SECONDS)
        await asyncio.wait({running}, timeout=CANCEL_GRACE_SECONDS)
    finally:
        # A runner cancelled once winds down, and may wait on its pipeline: a second
        # cancellation interrupts that wait.
        for _ in range(2):
            if running.done():
                break
            running.cancel()
            await asyncio.wait({running}, timeout=CANCEL_GRACE_SECONDS)
