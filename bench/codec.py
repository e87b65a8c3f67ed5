"""Codec throughput: the compiled frame codec and message wire path against their
pure-Python twins, same data, same run."""

from __future__ import annotations

import argparse
import importlib
import time
from types import ModuleType
from typing import Any

from bench.report import machine, median_of, print_table, write_json
from cim.proto import MESSAGE, Request
from cim.wire_fields import RECEIVE_USER_ID


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=200_000, help="frames in the stream")
    parser.add_argument("--payload", type=int, default=64, help="payload bytes per frame")
    parser.add_argument("--chunk", type=int, default=16 * 1024, help="bytes per decoder feed")
    parser.add_argument("--batch", type=int, default=64, help="payloads per encode_frames call")
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure; the median is reported")


def _implementations() -> dict[str, tuple[ModuleType, ModuleType]]:
    """(frame codec, message wire path) per implementation."""
    found = {"python": (importlib.import_module("cim._frame_py"), importlib.import_module("cim._wire_py"))}
    try:
        found["cython"] = (importlib.import_module("cim._frame"), importlib.import_module("cim._wire"))
    except ImportError:
        print("note: the extensions are not built; only the pure-Python twins are measured")
    return found


def measure(codec: ModuleType, wire: ModuleType, args: argparse.Namespace) -> dict[str, float]:
    payloads = [bytes([i % 251]) * args.payload for i in range(args.frames)]
    stream = codec.encode_frames(payloads)
    chunks = [stream[i : i + args.chunk] for i in range(0, len(stream), args.chunk)]
    batches = [payloads[i : i + args.batch] for i in range(0, len(payloads), args.batch)]

    def decode() -> float:
        decoder = codec.FrameDecoder()
        feed = decoder.feed
        count = 0
        start = time.perf_counter()
        for chunk in chunks:
            count += len(feed(chunk))
        elapsed = time.perf_counter() - start
        assert count == args.frames
        return count / elapsed

    def encode_one() -> float:
        encode_frame = codec.encode_frame
        start = time.perf_counter()
        for payload in payloads:
            encode_frame(payload)
        return len(payloads) / (time.perf_counter() - start)

    def encode_batch() -> float:
        encode_frames = codec.encode_frames
        start = time.perf_counter()
        for batch in batches:
            encode_frames(batch)
        return len(payloads) / (time.perf_counter() - start)

    # The server's message path, in runs of 8 as a client with 8 in flight sends them:
    # read the runs from the request frames, then write each run's pushes (with their
    # inbox seqs) and receipts.
    message = Request(requestId=7, reqMsg="x" * args.payload, cmd=MESSAGE, clientMsgId=1)
    message.properties[RECEIVE_USER_ID] = "1002"
    runs = [[message.SerializeToString()] * 8 for _ in range(args.frames // 8)]
    prefix, entry, head = b"\x18\x01" + b"p" * 40, b"\x22\x15" + b"r" * 21, b"\x18\x10" + b"h" * 30

    def scan() -> float:
        scan_chat_run = wire.scan_chat_run
        start = time.perf_counter()
        for frames in runs:
            scan_chat_run(frames, 0, 4096)
        return 8 * len(runs) / (time.perf_counter() - start)

    texts, client_msg_ids = wire.scan_chat_run(runs[0], 0, 4096)[2:]

    def push_and_receipt() -> float:
        push_bodies, frame_sequenced, encode_receipts = wire.push_bodies, wire.frame_sequenced, wire.encode_receipts
        start = time.perf_counter()
        for k in range(len(runs)):
            frame_sequenced(push_bodies(prefix, texts, k << 22, 1_700_000_000_000, client_msg_ids), 8 * k + 1, entry)
            encode_receipts(head, client_msg_ids, k << 22)
        return 8 * len(runs) / (time.perf_counter() - start)

    return {
        "decode_frames_per_s": median_of(args.repeat, decode)[0],
        "encode_frame_frames_per_s": median_of(args.repeat, encode_one)[0],
        "encode_frames_frames_per_s": median_of(args.repeat, encode_batch)[0],
        "scan_chat_run_msgs_per_s": median_of(args.repeat, scan)[0],
        "push_and_receipt_msgs_per_s": median_of(args.repeat, push_and_receipt)[0],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    impls = _implementations()
    figures = {name: measure(codec, wire, args) for name, (codec, wire) in impls.items()}
    ratio = (
        {k: figures["cython"][k] / figures["python"][k] for k in figures["python"]} if "cython" in figures else {}
    )
    rows = [
        [metric] + [figures[name][metric] for name in impls] + ([f"{ratio[metric]:.1f}x"] if ratio else [])
        for metric in figures["python"]
    ]
    params = {k: getattr(args, k) for k in ("frames", "payload", "chunk", "batch", "repeat")}
    print_table(
        f"codec: {args.frames:,} frames of {args.payload} B, fed in {args.chunk:,} B chunks "
        f"(median of {args.repeat})",
        ["metric (per second)", *impls, *(["cython/python"] if ratio else [])],
        rows,
    )
    return {"scenario": "codec", "params": params, "machine": machine(), "implementations": figures, "ratio": ratio}


def main(args: argparse.Namespace) -> None:
    write_json(args.json, run(args))
