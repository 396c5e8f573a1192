"""The server application API: your agent behind ``quicvoice serve --app module:attr``.

An application is ``async def app(session: quicvoice.Session) -> None``, or an
:class:`App` that also names the PCM rate it wants and who may call::

    import quicvoice

    async def echo(session: quicvoice.Session) -> None:
        heard = [frame async for frame in session.audio()]     # until the caller stops
        async with session.turn() as turn:
            for frame in heard:
                await turn.write(frame.data)                   # s16le at the app's rate

    app = quicvoice.App(echo, sample_rate=16000)

The design, bounds and overflow policies are in ``specs/api.md``.
"""

from .events import (
    AppEvent,
    Bye,
    CallerMigrated,
    SessionEnded,
    TurnInterruptedByCaller,
    TurnPlayed,
    UplinkEnded,
    UserEvent,
)
from .loader import DEFAULT_APP, load_app
from .session import (
    App,
    Handler,
    Session,
    SessionDetachedError,
    Turn,
    TurnInterrupted,
    session_handler,
)

__all__ = [
    "DEFAULT_APP",
    "App",
    "AppEvent",
    "Bye",
    "CallerMigrated",
    "Handler",
    "Session",
    "SessionDetachedError",
    "SessionEnded",
    "Turn",
    "TurnInterrupted",
    "TurnInterruptedByCaller",
    "TurnPlayed",
    "UplinkEnded",
    "UserEvent",
    "load_app",
    "session_handler",
]
