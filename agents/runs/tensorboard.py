"""TensorBoard event files that a resumed run continues.

One file per folder (`events.out.tfevents.metaloco`), appended to. A checkpoint records each
file's size; resuming cuts the file back to that size, dropping what the interrupted run wrote
after it, and appends from there, so a resumed run leaves the same single file as an
uninterrupted one (wall times aside).
"""

from __future__ import annotations

import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

from agents.runs.atomic import PathLike

EVENT_FILE_NAME = "events.out.tfevents.metaloco"  # TensorBoard reads any file named *tfevents*


class EventFile:
    """Scalars appended to `<folder>/events.out.tfevents.metaloco`.

    Args:
        folder: the TensorBoard run folder (created if missing).
        resume_size: None starts the file afresh (replacing one there); a size recorded by `size()`
            cuts the file back to it and continues (a file shorter than that, or missing, is
            continued as it is: the run was interrupted before the file held that much).
    """

    def __init__(self, folder: PathLike, resume_size: int | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / EVENT_FILE_NAME
        existing = self.path.stat().st_size if self.path.is_file() else 0
        if resume_size is None or existing == 0:
            self._handle = self.path.open("wb")
            self._records = RecordWriter(self._handle)
            self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        else:
            if existing > resume_size:
                with self.path.open("r+b") as handle:
                    handle.truncate(resume_size)
            self._handle = self.path.open("ab")
            self._records = RecordWriter(self._handle)

    def _write(self, event: Event) -> None:
        self._records.write(event.SerializeToString())

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """One scalar at `step` (buffered until `flush`)."""
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self._write(Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        """Hand buffered events to the operating system."""
        self._handle.flush()

    def size(self) -> int:
        """Bytes written so far (after a flush): what a checkpoint records to resume from."""
        self.flush()
        return self._handle.tell()

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if not self._handle.closed:
            self._handle.close()
