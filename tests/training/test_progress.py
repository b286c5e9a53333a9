"""The progress of a fit: one bar on a terminal (a real pseudo-terminal), nothing elsewhere,
per-epoch lines only with verbose."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import sys
import termios

import numpy as np
import pytest

from tripletsk import TripletEncoder

SMALL = dict(hidden_units=16, n_components=4, max_epochs=3, batch_size=32, random_state=0)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(3), 20)
    return (rng.normal(size=(3, 8))[y] + rng.normal(size=(60, 8))).astype(np.float32), y


@pytest.fixture
def terminal(monkeypatch):
    """``terminal()`` puts sys.stderr on the slave side of a pseudo-terminal and returns a
    reader of what it got. (Called in the test: pytest's capture resets sys.stderr between
    a fixture's setup and the test.)"""
    master, slave = pty.openpty()
    # 24 x 100 characters, as a terminal window has (a new pty is 0 x 0: no room for a bar).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    tty = open(slave, "w", encoding="utf-8")  # closed below

    def read() -> str:
        tty.flush()
        out = b""
        while select.select([master], [], [], 0.2)[0]:
            out += os.read(master, 65536)
        return out.decode("utf-8", "replace")

    def install():
        monkeypatch.setattr(sys, "stderr", tty)
        return read

    yield install
    tty.close()
    os.close(master)


def test_a_fit_draws_one_bar_of_epochs_on_a_terminal(blobs, terminal, capsys):
    read = terminal()
    TripletEncoder(**SMALL).fit(*blobs)
    drawn = read()
    assert "fit:" in drawn and "/3 " in drawn and "epoch" in drawn
    assert drawn.count("fit:") >= 2  # drawn, then updated (or cleared) on the same line
    assert "\n" not in drawn.replace("\r\n", "")  # one line, redrawn in place
    assert capsys.readouterr().out == ""  # no per-epoch lines without verbose


def test_without_a_terminal_only_verbose_lines_one_per_epoch(blobs, capsys):
    enc = TripletEncoder(**SMALL, verbose=1).fit(*blobs)
    captured = capsys.readouterr()
    assert not sys.stderr.isatty() and captured.err == ""  # no bar in logs and pipes
    lines = captured.out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2", "epoch 3"]
    assert f"wrongly ordered {enc.error_curve_[-1]:.4f}" in lines[-1]
    assert "active" not in lines[-1]  # soft margin: the hinge's "active" share means nothing


def test_negative_verbose_draws_no_bar_even_on_a_terminal(terminal):
    from tripletsk.training.progress import FitProgress

    read = terminal()
    progress = FitProgress(max_epochs=10, verbose=-1, hinge=False)
    progress.epoch(1, loss=0.5, error=0.25, active=0.0)
    progress.close()
    assert sys.stderr.isatty() and read() == ""
    assert TripletEncoder(verbose=-1).set_params(max_epochs=1)._validate_params() is None


def test_the_bar_shows_loss_and_training_triplet_accuracy(terminal):
    from tripletsk.training.progress import FitProgress

    read = terminal()
    progress = FitProgress(max_epochs=10, verbose=0, hinge=False)
    progress.epoch(1, loss=0.5, error=0.25, active=0.0)
    progress.bar.refresh()
    progress.close()
    drawn = read()
    assert "loss=0.5000" in drawn and "triplet acc=0.750" in drawn and "1/10" in drawn
