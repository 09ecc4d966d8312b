"""Turns cargo's build output into one progress line a person can follow, keeping every line
cargo printed in a log file. Reads cargo's stderr (with `term.progress.when=always`) on stdin.

    cargo build ... 2>&1 | python3 scripts/build-progress.py LOG "what is being built"
"""

import re
import sys
import time

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROGRESS = re.compile(r"Building \[[^\]]*\]\s*(\d+)/(\d+)(?::\s*(.*))?")
DOWNLOADING = re.compile(r"^\s*Downloading (\d+) crates?")


def main():
    log_path, what = sys.argv[1], sys.argv[2]
    tty = sys.stderr.isatty()
    started = time.monotonic()
    last_plain = -30.0
    shown = False
    with open(log_path, "w", encoding="utf-8") as log:
        pending = ""
        while True:
            chunk = sys.stdin.buffer.read1(4096) if hasattr(sys.stdin.buffer, "read1") else sys.stdin.buffer.read(4096)
            if not chunk:
                break
            pending += chunk.decode("utf-8", "replace")
            *pieces, pending = re.split(r"[\r\n]", pending)
            for piece in pieces:
                text = ANSI.sub("", piece).rstrip()
                if not text.strip():
                    continue
                match = PROGRESS.search(text)
                downloading = DOWNLOADING.search(text)
                if not match and not downloading:
                    log.write(text + "\n")
                    log.flush()
                    continue
                elapsed = time.monotonic() - started
                if downloading:
                    done = total = 0
                    line = f"downloading {downloading.group(1)} crates, {elapsed:.0f} s"
                else:
                    done, total = int(match.group(1)), int(match.group(2))
                    line = f"building {what}: {done}/{total} crates, {elapsed:.0f} s (full log: {log_path})"
                if tty:
                    sys.stderr.write("\r\x1b[2K" + line)
                    sys.stderr.flush()
                    shown = True
                elif elapsed - last_plain >= 30 or (total and done == total):
                    # Not a terminal (CI, a pipe): a line every 30 s instead of redrawing.
                    sys.stderr.write(line + "\n")
                    last_plain = elapsed
        if pending.strip():
            log.write(ANSI.sub("", pending) + "\n")
    if shown:
        sys.stderr.write("\r\x1b[2K")
        sys.stderr.flush()


if __name__ == "__main__":
    main()
