"""A test tool that prints what breaks naive runners; --mode picks the kind of output."""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--mode", required=True)
parser.add_argument("--seconds", type=float, default=0)
args = parser.parse_args()
out = sys.stdout.buffer
match args.mode:
    case "long_line":
        out.write(b"L" * 100_000 + b"\n")
    case "huge_no_newline":
        chunk = b"0123456789" * 10_000
        for _ in range(100):  # 10 MB
            out.write(chunk)
    case "invalid_utf8":
        out.write(b"bad \xff\xfe bytes \xc3\n")
    case "nul":
        out.write(b"before\x00after\n")
    case "ansi":
        out.write(b"\x1b[31mERROR\x1b[0m \x1b[1mred\x1b[0m alert\n")
    case "cursor_codes":
        out.write(b"\x1b[2K\x1b[1G\x1b[32mok\x1b[0m \x1b]0;title\x07cleared\n")
    case "escape_kinds":
        # One line per kind of ECMA-48 sequence a terminal would obey (each line's "a" and "b"
        # around it), then C0 controls, a colour code and a tab, which stay.
        for sequence in (
            b"\x1bc",  # Fs: full reset
            b"\x1b7\x1b8\x1b=",  # Fp: save and restore the cursor, keypad mode
            b"\x1b(0\x1b#8",  # nF: line-drawing glyphs, screen alignment test
            b"\x1bD\x1bM",  # Fe: index, reverse index
            b"\x1b[2J\x1b[?25l\x1b[2 q",  # CSI: clear the screen, hide the cursor, its shape
            b"\x1b]0;title\x07\x1b]8;;http://x\x1b\\",  # OSC: title (BEL), hyperlink (ST)
            b"\x1bPq#0;2;0;0;0#0!6~\x1b\\",  # DCS with a sixel payload
            b"\x1bXsos\x1b\\\x1b^pm\x1b\\\x1b_apc\x1b\\",  # SOS, PM, APC with payloads
            "\u009b2J\u009d0;t\u009c\u0090q\u009c\u0085".encode(),  # C1: 8-bit CSI, OSC, ...
        ):
            out.write(b"a" + sequence + b"b\n")
        out.write(b"bell\x07 back\x08space\n")
        out.write(b"\x1b[32mgreen\x1b[0m\ttab\n")
        out.write(b"cut short\x1b]0;never ended\n")
        out.write(b"last\x1b")  # a lone ESC as the output's end
    case "cr_progress":
        for i in range(1, 5):
            out.write(f"\rdownloading [{i}/4]".encode())
            out.flush()
            time.sleep(0.05)
        out.write(b"\ndone\n")
    case "interleaved":
        for i in range(1, 201):
            stream = sys.stdout if i % 2 else sys.stderr
            print(f"line {i}", file=stream, flush=True)
    case "close_stdout":
        print("before close", flush=True)
        os.close(1)
        time.sleep(0.5)
        print("still running on stderr", file=sys.stderr, flush=True)
    case "silent":
        time.sleep(args.seconds)
    case "utf8_split":
        out.write("ä".encode() * 100 + b"\n")
    case "control_flood":
        # Control characters encode as \u00XX (6 bytes each): 20 lines of 64 KiB are 7.5 MB.
        for i in range(20):
            out.write(bytes([1 + i % 8]) * 65536 + b"\n")
    case "absurd_progress":
        out.write(b"INFO [99999999999999999999/5] done\n")
        out.write(b"INFO [7/5] more than all\n")
        out.write(b'##jobrunner:progress {"current": -3, "total": 4, "phase": "a\\u0000b"}\n')
        out.write(b'##jobrunner:progress {"percent": 250, "message": "x\\u0000\\ty"}\n')
        out.write(b'##jobrunner:result {"summary": "nul\\u0000here", "n": 99999999999999999999}\n')
out.flush() if args.mode != "close_stdout" else None
