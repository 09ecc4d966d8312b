"""Turns cargo's build output into one progress line a person can follow, keeping every line
cargo printed in a log file. Reads cargo's stderr (with `term.progress.when=always`) on stdin.

    cargo build ... 2>&1 | python3 scripts/build-progress.py LOG "what is being built"

The line is redrawn every second on a terminal (and printed every 30 s otherwise) even when
cargo says nothing new, so a long unit (llama.cpp's CMake build) does not look like a hang.
"""

import re
import sys
import threading
import time

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROGRESS = re.compile(r"Building \[[^\]]*\]\s*(\d+)/(\d+)(?::\s*(.*))?")
DOWNLOADING = re.compile(r"^\s*Downloading (\d+) crates?")


class Line:
    """The latest state, drawn by the reader and by a ticker alike."""

    def __init__(self, log_path, what):
        self.log_path, self.what = log_path, what
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.state = None  # ("build", done, total, building) or ("download", n)
        self.last_plain = -30.0
        self.shown = False
        self.lock = threading.Lock()

    def text(self):
        elapsed = time.monotonic() - self.started
        if self.state is None:
            return None
        if self.state[0] == "download":
            return f"downloading {self.state[1]} crates, {elapsed:.0f} s"
        _, done, total, building = self.state
        now = f" (now: {building[:60]})" if building else ""
        return f"building {self.what}: {done}/{total} crates, {elapsed:.0f} s{now}; full log: {self.log_path}"

    def draw(self, force=False):
        with self.lock:
            line = self.text()
            if line is None:
                return
            elapsed = time.monotonic() - self.started
            if self.tty:
                sys.stderr.write("\r\x1b[2K" + line)
                sys.stderr.flush()
                self.shown = True
            elif force or elapsed - self.last_plain >= 30:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
                self.last_plain = elapsed

    def clear(self):
        with self.lock:
            if self.shown:
                sys.stderr.write("\r\x1b[2K")
                sys.stderr.flush()


def main():
    log_path, what = sys.argv[1], sys.argv[2]
    line = Line(log_path, what)
    finished = threading.Event()

    def tick():
        while not finished.wait(1.0):
            line.draw()

    threading.Thread(target=tick, daemon=True).start()
    with open(log_path, "w", encoding="utf-8") as log:
        pending = ""
        while True:
            chunk = sys.stdin.buffer.read1(4096)
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
                if match:
                    done, total = int(match.group(1)), int(match.group(2))
                    line.state = ("build", done, total, (match.group(3) or "").strip())
                    line.draw(force=done == total)
                elif downloading:
                    line.state = ("download", int(downloading.group(1)))
                    line.draw()
                else:
                    log.write(text + "\n")
                    log.flush()
        if pending.strip():
            log.write(ANSI.sub("", pending) + "\n")
    finished.set()
    line.clear()


if __name__ == "__main__":
    main()
