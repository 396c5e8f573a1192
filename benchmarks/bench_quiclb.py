"""QUIC-LB encode and decode cost per CID, beside one bare AES-128-ECB block in the same run.

    python benchmarks/bench_quiclb.py [--quick]

Every figure is the best of several interleaved rounds (this machine is shared and noisy);
ratios against the floor measured in the same run hold better than the times themselves.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from quicvoice.quiclb import LoadBalancerConfig, LoadBalancerDecoder, QuicLbConnectionIdGenerator
from quicvoice.quiclb.algorithms import aes_ecb_decryptor, aes_ecb_encryptor

KEY = bytes.fromhex("8f95f09245765f80256934e50c66207f")


@dataclass(frozen=True)
class Case:
    name: str
    config: LoadBalancerConfig


CASES = [
    Case("plaintext 4+12", LoadBalancerConfig(0, 4, 12)),
    Case("single-pass 4+12", LoadBalancerConfig(0, 4, 12, KEY)),
    Case("four-pass 3+4 (3-pass decode)", LoadBalancerConfig(0, 3, 4, KEY)),
    Case("four-pass 4+8 (3-pass decode)", LoadBalancerConfig(0, 4, 8, KEY)),
    Case("four-pass 10+5 (4-pass decode)", LoadBalancerConfig(0, 10, 5, KEY)),
]


def per_call_ns(function: Callable[[], object], calls: int) -> float:
    """Nanoseconds per call of ``function`` over ``calls`` calls (loop overhead subtracted)."""
    loop = range(calls)
    start = time.perf_counter_ns()
    for _ in loop:
        function()
    elapsed = time.perf_counter_ns() - start
    start = time.perf_counter_ns()
    for _ in loop:
        pass
    return (elapsed - (time.perf_counter_ns() - start)) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args(argv)
    calls, rounds = (2_000, 3) if args.quick else (50_000, 9)

    block = os.urandom(16)
    aes_decrypt = aes_ecb_decryptor(KEY).update
    aes_encrypt = aes_ecb_encryptor(KEY).update
    measured: dict[str, Callable[[], object]] = {
        "floor: AES-ECB decrypt 1 block": lambda: aes_decrypt(block),
        "floor: AES-ECB encrypt 1 block": lambda: aes_encrypt(block),
    }
    for case in CASES:
        config = case.config
        server_id = os.urandom(config.server_id_len)
        nonce = os.urandom(config.nonce_len)
        cid = config.encode(server_id, nonce)
        decoder = LoadBalancerDecoder([config])
        generator = QuicLbConnectionIdGenerator(server_id, config, os.urandom(32))
        # Bind the callables first so every row pays the same single call from the loop.
        encode, decode, route = config.encode, config.decode, decoder.decode
        measured[f"{case.name}: encode"] = lambda e=encode, s=server_id, n=nonce: e(s, n)  # type: ignore[misc]
        measured[f"{case.name}: decode"] = lambda d=decode, c=cid: d(c)  # type: ignore[misc]
        measured[f"{case.name}: decoder.decode"] = lambda r=route, c=cid: r(c)  # type: ignore[misc]
        measured[f"{case.name}: generate"] = generator.generate

    best = dict.fromkeys(measured, float("inf"))
    for _ in range(rounds):
        for name, function in measured.items():
            best[name] = min(best[name], per_call_ns(function, calls))

    floor = best["floor: AES-ECB decrypt 1 block"]
    print(f"QUIC-LB codec, Python {sys.version.split()[0]}, best of {rounds} x {calls} calls")
    print()
    print("| operation | ns per CID | x AES decrypt |")
    print("|---|---:|---:|")
    for name, nanoseconds in best.items():
        print(f"| {name} | {nanoseconds:.0f} | {nanoseconds / floor:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
