"""What a job's output means: masks, protocol messages, levels, progress and the result summary.

Every line passes through here before it leaves the runner, so a masked value never reaches
NATS, the read models or a browser.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Any

from jobrunner.common import loglevels
from jobrunner.common.jobtypes import JobType
from jobrunner.services.runner import output, protocol
from jobrunner.services.runner.bounds import BoundedResult
from jobrunner.services.runner.output import Progress
from jobrunner.services.runner.publisher import LinePublisher

MASK = "***"


class JobReporter:
    def __init__(self, publisher: LinePublisher, job_type: JobType, masks: list[str]) -> None:
        self.publisher = publisher
        # Longest first, so a secret that contains another is masked whole.
        self.masks = sorted({m for m in masks if m}, key=len, reverse=True)
        self.progress_re = (
            re.compile(job_type.progress_pattern)
            if job_type.progress_pattern
            else output.DEFAULT_PROGRESS_RE
        )
        self.level_re = re.compile(job_type.level_pattern) if job_type.level_pattern else None
        self.result_re = re.compile(job_type.result_pattern) if job_type.result_pattern else None
        self._result = BoundedResult()

    def mask(self, text: str) -> str:
        for secret in self.masks:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    @property
    def max_line_bytes(self) -> int:
        return self.publisher.max_line_bytes

    async def room(self) -> None:
        await self.publisher.room()

    def line(
        self,
        stream: str,
        text: str,
        at: datetime,
        *,
        level: str | None = None,
        transient: bool = False,
    ) -> None:
        text = self.mask(text)
        plain = output.without_colours(text)
        if transient:
            # A progress bar redrawing itself with \r: progress only, not a log line.
            progress = output.parse_progress(plain, self.progress_re)
            if progress is not None:
                self.publisher.report_progress(progress)
            return
        if plain.startswith(protocol.PREFIX):
            message = protocol.parse(plain)
            if isinstance(message, Progress):
                self.progress(message)
                return
            if isinstance(message, dict):
                self.add_result(message)
                return
        if level is None or level not in loglevels.LEVELS:
            level = output.parse_level(plain, pattern=self.level_re)
        self.publisher.add(stream, level, text, at)
        progress = output.parse_progress(plain, self.progress_re)
        if progress is not None:
            self.publisher.report_progress(progress)
        if self.result_re is not None:
            found = output.parse_result(plain, self.result_re)
            if found:
                self._result.merge(found)

    def lines(self, stream: str, texts: list[str], at: datetime) -> None:
        """A chunk's lines of a tool's output: what ``line`` does for each, done for the block.

        A block in which a secret, an escape sequence or a protocol message occurs goes line by
        line. Otherwise masking and colour stripping change nothing, levels come from one regex
        pass, and of the progress counts only the last one found matters: the publisher keeps
        only the latest state, and nothing is published between the lines of a chunk.
        """
        if len(texts) == 1:
            # A tool printing a line at a time (most reads of most jobs): the block's set-up
            # (its regex pass, its size check) costs twice what the line's own way does.
            self.line(stream, texts[0], at)
            return
        if not texts:
            return
        block = "\n".join(texts)
        # ("#" first: a one-character search is many times faster than the prefix's)
        has_prefix = "#" in block and protocol.PREFIX in block
        if "\x1b" in block or has_prefix or any(m in block for m in self.masks):
            for text in texts:
                self.line(stream, text, at)
            return
        if self.level_re is None:
            levels = output.levels_of_lines(texts, block)
        else:
            levels = [output.parse_level(text, pattern=self.level_re) for text in texts]
        self.publisher.add_lines(stream, levels, texts, at, block)
        default_progress = self.progress_re is output.DEFAULT_PROGRESS_RE
        if not default_progress or ("[" in block and self.progress_re.search(block)):
            # (A custom pattern may be anchored to a line: only the default one, which starts
            # with "[", is looked for in the block as a whole.)
            for text in reversed(texts):
                progress = output.parse_progress(text, self.progress_re)
                if progress is not None:
                    self.publisher.report_progress(progress)
                    break
        if self.result_re is not None:
            for text in texts:
                found = output.parse_result(text, self.result_re)
                if found:
                    self._result.merge(found)

    def progress(self, progress: Progress) -> None:
        self.publisher.report_progress(
            replace(
                progress,
                phase=self.mask(progress.phase) if progress.phase else progress.phase,
                message=self.mask(progress.message) if progress.message else progress.message,
            )
        )

    def add_result(self, fields: dict[str, Any]) -> None:
        self._result.merge(
            {k: self.mask(v) if isinstance(v, str) else v for k, v in fields.items()}
        )

    @property
    def result(self) -> dict[str, Any]:
        """The job's result so far, cleaned and within the contract's size (cut with a note)."""
        return self._result.value()
