"""Stopping cleanly: signals become a request the loop honours; timed position saves."""

import os
import signal

import pytest
import torch

from cifar100.data.loader import DeviceBatches
from cifar100.data.tensors import ImageSet
from cifar100.engine.distributed import DistInfo
from cifar100.engine.interrupt import SignalStop, StepWatch

CPU = torch.device("cpu")


def test_first_signal_is_a_request_and_the_second_stops_at_once(capsys):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with SignalStop() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == "SIGTERM"
            assert "send it again to stop at once" in capsys.readouterr().err
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("the second signal must interrupt")
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_handlers_are_restored_after_a_normal_exit():
    before = signal.getsignal(signal.SIGTERM)
    with SignalStop():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_ignored_signal_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell's background job has it
    try:
        with SignalStop():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # caught
    finally:
        signal.signal(signal.SIGINT, before)


def test_step_watch_saves_on_its_timer_and_stops_on_request():
    signals = SignalStop()
    never = StepWatch(signals, 0.0, DistInfo(), CPU)
    assert [never.after_step(True) for _ in range(3)] == [(False, False)] * 3
    timed = StepWatch(signals, 1e-9, DistInfo(), CPU)
    assert timed.after_step(False) == (True, False)
    limited = StepWatch(signals, 0.0, DistInfo(), CPU, max_steps=2)
    assert limited.after_step(False) == (False, False)
    assert limited.after_step(False) == (True, True) and limited.reason == "max_steps"
    signals.received = "SIGINT"
    assert never.after_step(False) == (True, True) and never.after_epoch()
    assert never.reason == "SIGINT"


def test_device_batches_resume_from_a_given_batch():
    data = ImageSet(torch.zeros(23, 2, 2, 3, dtype=torch.uint8), torch.arange(23), ["a"] * 23)
    batches = DeviceBatches(data, CPU, batch_size=5, shuffle=True, seed=1)
    whole = [y for _, y in batches.epoch(4)]
    rest = [y for _, y in batches.epoch(4, start=3)]
    assert len(rest) == 2 and all(torch.equal(a, b) for a, b in zip(whole[3:], rest))
