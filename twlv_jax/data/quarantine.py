"""Bad-file accounting: count per reason, log each file once, list it, stop past a fraction."""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter

from twlv_jax import paths as pathlib

log = logging.getLogger(__name__)

QUARANTINE_HEADER = ("path", "reason", "detail")


class TooManyBadFiles(RuntimeError):
    """More of the data is unreadable than `data.max_bad_fraction` allows."""


class Quarantine:
    """Skipped files of one process: counts per reason, a log line and a CSV row per file.

    `total` is the number of files this process reads (its slice of the source); once more
    than `max_fraction` of them are bad, or all of them (even when max_fraction is 1),
    `add` raises TooManyBadFiles.
    """

    def __init__(self, path: str | None, *, total: int, max_fraction: float):
        self.path, self.total, self.max_fraction = path, total, max_fraction
        self.files: dict[str, str] = {}   # name -> reason
        self.skips = 0                    # every skip, counting repeats in later epochs
        self._listed = self._read_listed()
        if path and not pathlib.isfile(path):  # an empty list says: nothing bad so far
            self._write_rows([QUARANTINE_HEADER])

    def _read_listed(self) -> set[str]:
        if not self.path or not pathlib.isfile(self.path):
            return set()
        with pathlib.open(self.path, newline="", encoding="utf-8") as f:
            return {row["path"] for row in csv.DictReader(f) if row.get("path")}

    @property
    def counts(self) -> dict[str, int]:
        """Distinct bad files per reason."""
        return dict(Counter(self.files.values()))

    def add(self, name: str, reason: str, detail: str) -> None:
        """Records one skipped file (logged and listed the first time it is seen)."""
        self.skips += 1
        if name in self.files:
            return
        self.files[name] = reason
        log.warning("skipping a bad file (%s): %s", reason, detail)
        self._append(name, reason, detail)
        if len(self.files) > self.max_fraction * self.total or len(self.files) >= self.total:
            raise TooManyBadFiles(self.summary(stopped=True))

    def _append(self, name: str, reason: str, detail: str) -> None:
        if self.path and name not in self._listed:
            self._write_rows([(name, reason, detail)])
            self._listed.add(name)

    def _write_rows(self, rows) -> None:
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        if not pathlib.is_remote(self.path):
            pathlib.makedirs(pathlib.dirname(pathlib.absolute(self.path)))
        pathlib.append(self.path, text.getvalue())

    def summary(self, stopped: bool = False) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "none"
        text = (f"{len(self.files)} of {self.total} files unreadable "
                f"({len(self.files) / max(self.total, 1):.1%}; by reason: {counts}); "
                f"list: {self.path or 'not written (no quarantine path)'}")
        if stopped and len(self.files) >= self.total:
            text = (f"stopping: {text}: every file is unreadable. Check data.path and the "
                    "files (`twlv data prepare` validates a collection)")
        elif stopped:
            text = (f"stopping: {text}, more than data.max_bad_fraction={self.max_fraction}. "
                    "Fix or remove these files (`twlv data prepare` validates a collection), "
                    "or raise data.max_bad_fraction")
        return text

    def get_state(self) -> dict:
        return {"files": dict(self.files), "skips": self.skips}

    def set_state(self, state: dict) -> None:
        self.files = dict(state["files"])
        self.skips = int(state["skips"])
