"""Log files in plain text: Detectron2's ``default_setup`` logs the config highlighted for a
terminal, and its file handlers would write the colour codes to ``log.txt`` as they are."""
import logging
import re

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

__all__ = ["PlainTextFormatter", "plain_text_log_files"]

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class PlainTextFormatter(logging.Formatter):
    """A handler's formatter with terminal colour codes (ANSI escape sequences) removed."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI_ESCAPE.sub("", self.inner.format(record))


def plain_text_log_files(output_dir: str) -> None:
    """Every handler of the ``detectron2`` and ``fvcore`` loggers that does not write to a terminal
    (``log.txt``, a redirected stdout) writes plain text. Detectron2's ``default_setup`` logs the
    config file and the full config highlighted for a terminal (pygments), colour codes that its
    handlers write to ``log.txt`` as they are. These are the loggers ``default_setup`` sets up,
    with its arguments: ``setup_logger`` is cached, so ``default_setup`` then logs through the
    handlers changed here."""
    rank = comm.get_rank()
    loggers = [setup_logger(output_dir, distributed_rank=rank, name="fvcore"),
               setup_logger(output_dir, distributed_rank=rank)]
    for handler in (h for lg in loggers for h in lg.handlers):
        stream = getattr(handler, "stream", None)
        to_terminal = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        if not to_terminal and not isinstance(handler.formatter, PlainTextFormatter):
            handler.setFormatter(PlainTextFormatter(handler.formatter or logging.Formatter()))
