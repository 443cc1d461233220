"""Run a command with its stderr on a pseudo-terminal, and render what it drew as a screen.

`Screen` understands the few control sequences a progress display uses (carriage return, line
feed, cursor up/down, erase line, colours and cursor visibility are dropped), which is enough
to read what the user saw last, without a terminal emulator package.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
from pathlib import Path

_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def run_on_terminal(
    argv: list[str], cwd: Path, env: dict[str, str], columns: int = 120, timeout: float = 120
) -> tuple[int, bytes]:
    """(exit status, everything written to stderr). stdout is discarded; stderr is a pty of
    `columns` x 40, so `isatty()` is true there and only there."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=follower,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        status = proc.wait(timeout)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return status, b"".join(chunks)


class Screen:
    """The text left on screen after `output` was drawn: a list of lines."""

    def __init__(self, output: str) -> None:
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0
        position = 0
        for match in _CSI.finditer(output):
            self._text(output[position : match.start()])
            self._control(match.group(1), match.group(2))
            position = match.end()
        self._text(output[position:])

    def text(self) -> str:
        return "\n".join("".join(line).rstrip() for line in self.lines)

    def _text(self, text: str) -> None:
        for char in text:
            if char == "\r":
                self.col = 0
            elif char == "\n":
                self._move_to(self.row + 1)
                self.col = 0
            elif char >= " ":
                line = self.lines[self.row]
                line.extend(" " * (self.col + 1 - len(line)))
                line[self.col] = char
                self.col += 1

    def _control(self, params: str, command: str) -> None:
        count = int(params) if params.isdigit() else 1
        if command == "A":
            self._move_to(max(0, self.row - count))
        elif command == "B":
            self._move_to(self.row + count)
        elif command == "K":  # erase in line: to its end, from its start (1), or all (2)
            line = self.lines[self.row]
            if params == "2":
                line.clear()
            elif params == "1":
                line[: self.col + 1] = " " * min(len(line), self.col + 1)
            else:
                del line[self.col :]
        elif command == "G":
            self.col = max(0, count - 1)
        # m (colours), h/l (cursor visibility): nothing to draw

    def _move_to(self, row: int) -> None:
        while len(self.lines) <= row:
            self.lines.append([])
        self.row = row
