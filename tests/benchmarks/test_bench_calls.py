"""``benchmarks/bench_calls.py`` and its load processes (``benchmarks/load/echo_calls.py``), run
for real: backend and load processes on loopback, small levels, short windows."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest

from benchmarks import bench_calls
from benchmarks.load.echo_calls import FRAME_SECONDS, LoadProcesses, Schedule, share
from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE

needs_ngtcp2 = pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}")


def test_every_call_runs_in_exactly_one_load_process() -> None:
    for calls in (1, 5, 60, 101):
        for processes in (1, 2, 3):
            shares = [share(calls, processes, which) for which in range(processes)]
            assert sorted(i for part in shares for i in part) == list(range(calls))


def test_a_schedule_crosses_to_a_load_process_unchanged() -> None:
    schedule = Schedule.starting_now(60, 4.0)
    assert Schedule.from_json(schedule.to_json()) == schedule
    assert schedule.begin < schedule.measure_from < schedule.stop
    assert schedule.stop - schedule.measure_from == pytest.approx(4.0)


def test_an_unknown_load_kind_is_refused_before_any_process_starts() -> None:
    with pytest.raises(ValueError, match="load kind 'carrier-pigeon'"):
        LoadProcesses("carrier-pigeon", [1], 4, 2, "asyncio")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--load-processes", "0"], "--load-processes: at least 1"),
        (["--quic-load", "aioquic"], "invalid choice: 'aioquic'"),
    ],
)
def test_bad_load_arguments_are_a_clear_error(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_calls.main(["--backends", "websocket", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.integration
@needs_ngtcp2
def test_the_native_load_sustains_calls_on_the_ngtcp2_backend() -> None:
    calls, seconds = 6, 1.0
    level, _ = bench_calls.run_on(
        "asyncio",
        bench_calls.run_level(
            "quicvoice-ngtcp2", "asyncio", calls, seconds, quic_load="native", load_processes=2
        ),
    )
    assert (level.load, level.load_processes) == ("native", 2)
    assert level.established == calls
    expected = calls * seconds / FRAME_SECONDS
    assert level.frames_sent == pytest.approx(expected, rel=0.1)
    assert level.frames >= 0.9 * level.frames_sent  # the echoes of the window came back, timed
    # Every ACK rode on a frame, both ways: one packet per frame (2 were an ACK-only each).
    assert level.packets_in_per_frame == pytest.approx(1.0, abs=0.1)
    assert level.packets_out_per_frame == pytest.approx(1.0, abs=0.1)
    assert level.client_cpu > 0  # the load processes' CPU is counted


@pytest.mark.integration
def test_websocket_and_client_rows_print_which_load_ran() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        code = bench_calls.main(
            ["--levels", "4", "--seconds", "1", "--backends", "websocket,quicvoice",
             "--quic-load", "client", "--load-processes", "2"]
        )  # fmt: skip
    assert code == 0
    table = out.getvalue()
    assert "Load: 2 load process(es) per row" in table
    assert "websocket: websockets clients" in table
    assert "quicvoice: the project's client (quicvoice.asyncio.client)" in table
    rows = [line for line in table.splitlines() if line.startswith(("| websocket", "| quicvoice"))]
    assert len(rows) == 2
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2] == "4/4"  # every call established
        assert cells[8] != "nan / nan"  # round trips were measured
        assert int(cells[11].rstrip(" %")) >= 80  # frames sent / due: the load kept up
