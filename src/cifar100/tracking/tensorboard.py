"""TensorBoard tracking as training goes: each epoch's metrics as scalars (tags as
metrics.jsonl names them, step = the epoch), the config and environment as text, the final
test under test/. Event files in RUN_DIR/tensorboard: `tensorboard --logdir runs`.
"""

from __future__ import annotations

import json
import sys

from cifar100.errors import ConfigError
from cifar100.runtime.run_dir import RunDir, read_json_or_none


class TensorBoardTracker:
    def __init__(self) -> None:
        try:
            # Imported here, not above: tracked runs alone need TensorBoard's writer.
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "track.tensorboard needs TensorBoard: pip install 'cifar100[track]' (or "
                "tensorboard), or drop --track tensorboard"
            ) from None
        self.make_writer, self.writer, self.failed = SummaryWriter, None, False

    def on_start(self, run) -> None:
        files = RunDir(run.run_dir)
        done = run.epochs_done

        def start() -> None:
            # purge_step: a resumed run's later events replace any the stopped session wrote
            # after its last checkpoint.
            self.writer = self.make_writer(str(files.tensorboard), purge_step=done + 1)
            if done == 0:
                for name, file in (("config", files.config), ("environment", files.environment)):
                    text = json.dumps(read_json_or_none(file), indent=2)
                    self.writer.add_text(name, "    " + text.replace("\n", "\n    "), 0)

        self._try(run, start)

    def on_epoch(self, run, record: dict) -> None:
        def log() -> None:
            for key, value in record.items():
                if (
                    key != "epoch"
                    and isinstance(value, int | float)
                    and not isinstance(value, bool)
                ):
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

        self._try(run, log)

    def on_end(self, run, result) -> None:
        def end() -> None:
            for key, value in result.test.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(f"test/{key}", value, result.epochs)
            self.writer.close()

        self._try(run, end)

    def on_error(self, run, error: BaseException) -> None:
        if self.writer is not None:
            self._try(run, self.writer.close)

    def _try(self, run, step) -> None:
        if self.failed:
            return
        try:
            step()
        except Exception as e:  # noqa: BLE001 - a tracker that fails must not stop training
            self.failed = True
            print(
                f"warning: TensorBoard events not written to {RunDir(run.run_dir).tensorboard} "
                f"({type(e).__name__}: {e}); training goes on",
                file=sys.stderr,
            )
