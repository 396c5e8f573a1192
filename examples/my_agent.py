import quicvoice


async def agent(session: quicvoice.Session) -> None:
    heard = [frame.data async for frame in session.audio()]  # 16 kHz s16le until the caller stops
    session.state["utterances"] = session.state.get("utterances", 0) + 1  # survives a backend loss
    caller = session.caller.subject if session.caller else "anyone"
    session.send_event("heard", {"seconds": len(heard) / 50, "caller": caller})
    async with session.turn() as turn:  # the reply; write() waits while the client is behind
        for pcm in heard:
            await turn.write(pcm)
    if turn.interrupted:  # the caller barged in, having heard turn.played_ms of it
        session.state["cut_at_ms"] = turn.played_ms


def accept(request: quicvoice.CallRequest) -> bool:  # runs after the caller's token checked out
    return request.metadata.get("room") == "7"


app = quicvoice.App(agent, sample_rate=16000, accept=accept)
