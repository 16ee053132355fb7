"""A tool that leaves files in $JOBRUNNER_OUTPUT_DIR, chosen by --mode (artifact tests)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

MIB = 1024 * 1024


def pattern(size: int, seed: int) -> bytes:
    """Deterministic bytes that are not all alike (so a swapped chunk shows), made fast."""
    block = bytes((i * 31 + seed) % 251 for i in range(MIB + 251))
    out = bytearray()
    offset = 0
    while len(out) < size:
        take = min(MIB, size - len(out))
        out += block[offset % 251 : offset % 251 + take]
        offset += 7
    return bytes(out)


def write_big(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            take = min(4 * MIB, left)
            f.write(os.urandom(take))
            left -= take


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", required=True)
    parser.add_argument("--mib", type=int, default=1)
    parser.add_argument("--sizes", default="")
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0)
    args = parser.parse_args()
    out = Path(os.environ["JOBRUNNER_OUTPUT_DIR"])
    if args.mode == "several":
        (out / "summary.txt").write_text("3 pages read\n")
        (out / "data.bin").write_bytes(pattern(300_000, 1))  # three chunks
        (out / "sub" / "deeper").mkdir(parents=True)
        (out / "sub" / "deeper" / "report.json").write_text('{"ok": true}')
        (out / "Übersicht 1.csv").write_text("a;b\n1;2\n")
        (out / "empty.txt").write_bytes(b"")
    elif args.mode == "page":
        # A page with a script: served as text/html now that files keep their type.
        (out / "page.html").write_text("<script>document.title = 'ran'</script><p>report</p>")
    elif args.mode == "big":
        write_big(out / "big.bin", args.mib * MIB)
    elif args.mode == "hostile":
        (out / "sub").mkdir()
        # The subfolder trick: "sub/../../x" is one level above the output directory.
        with open(f"{out}/sub/../../x", "w") as f:
            f.write("escaped")
        os.symlink("/etc/passwd", out / "passwd")
        os.symlink("/etc", out / "etc_dir")
        os.mkfifo(out / "pipe")
        (out / "line\nbreak.txt").write_text("control character in the name")
        (out / "..\\x").write_text("a backslash name")
        # Reads "invoiceexe.pdf" wherever it is shown; it is an .exe.
        (out / "invoice\u202efdp.exe").write_text("a bidirectional override in the name")
        # Names Windows cannot store: the ZIP would not unpack there as it is.
        (out / "q?x#y.csv").write_text("a question mark in the name")
        (out / "CON.txt").write_text("a device name of Windows")
        (out / "trailing.").write_text("a name ending in a dot")
        (out / "kept.txt").write_text("the one good file")
    elif args.mode == "sized":
        for i, size in enumerate(int(s) for s in args.sizes.split(",") if s):
            (out / f"file{i}.bin").write_bytes(b"x" * size)
    elif args.mode == "long_name":
        # A safe name (768 characters, parts of 252 bytes) whose UTF-8 is 3,289 bytes: its
        # object's subject (the name in base64) is longer than a NATS control line's 4 KiB.
        deep = out.joinpath(*["\U0001d538" * 63] * 13)
        deep.mkdir(parents=True)
        (deep / "f.txt").write_text("a file with a long name")
        (out / "kept.txt").write_text("the one good file")
    elif args.mode == "output_dir_link":
        # The output directory itself swapped for a link to a folder outside the runner's work
        # dir (next to it, in the test's tmp_path): nothing in there may be read.
        outside = out.parent.parent.parent / "outside"
        outside.mkdir(exist_ok=True)
        (outside / "secret.txt").write_text("must never be read")
        out.rmdir()
        os.symlink(outside, out)
    elif args.mode == "deep":
        # A folder 1,200 levels deep, just past where a recursive removal (shutil.rmtree,
        # one call per level) fails; made relative to each level, so no path is long.
        fd = os.open(out, os.O_RDONLY)
        for _ in range(1200):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(fd)
        (out / "kept.txt").write_text("the one good file")
    elif args.mode == "big_then_wait":
        write_big(out / "big.bin", args.mib * MIB)
        print("written", flush=True)
    print(f"done: {args.mode}", flush=True)
    time.sleep(args.seconds)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
