"""Imported by the cell workers' fork servers alone (:data:`ddbench.run.worker.PRELOAD`), never by
the harness: on Linux the fork server dies with the process that started it (the driver, or a cell
host), even when that one is SIGKILLed. Its cell workers hold its lifeline pipe open, so without
this it would wait for them, and they (which die with the fork server) would run on."""
import os

from ddbench.run.worker import exit_with_parent

exit_with_parent()
if os.getppid() == 1:  # the starter died before the line above ran
    os._exit(1)
