"""`py`: the generic Python runner. The task's stdin is a Python program, run as `__main__`.

sys.argv is [module name, task args...]; stdout, stderr and the exit code are the task's. An
uncaught exception prints its traceback on stderr and exits 1; `sys.exit(n)` exits n.

Everything imported at the top of this file is imported at build time and lives in the
component's snapshot: a task's `import json` costs nothing. A module not imported here cannot be
imported by a task (the guest has no files to import it from).
"""

# The standard library a task can use, imported once, at build time.
import argparse  # noqa: F401
import base64  # noqa: F401
import bisect  # noqa: F401
import builtins
import calendar  # noqa: F401
import collections  # noqa: F401
import copy  # noqa: F401
import csv  # noqa: F401
import dataclasses  # noqa: F401
import datetime  # noqa: F401
import decimal  # noqa: F401
import difflib  # noqa: F401
import enum  # noqa: F401
import fractions  # noqa: F401
import functools  # noqa: F401
import gc
import hashlib  # noqa: F401
import heapq  # noqa: F401
import hmac  # noqa: F401
import html  # noqa: F401
import io  # noqa: F401
import itertools  # noqa: F401
import json  # noqa: F401
import math  # noqa: F401
import operator  # noqa: F401
import pprint  # noqa: F401
import random
import re  # noqa: F401
import statistics  # noqa: F401
import string  # noqa: F401
import struct  # noqa: F401
import sys
import textwrap  # noqa: F401
import time  # noqa: F401
import traceback
import typing  # noqa: F401
import unicodedata  # noqa: F401
import urllib.parse  # noqa: F401
import uuid  # noqa: F401
import zlib  # noqa: F401

from wit_world import exports
from wit_world.imports import environment
from wit_world.imports import exit as wasi_exit


def run_program(source: bytes, argv: list) -> int:
    """Runs `source` as `__main__` with `argv`; returns the process exit code."""
    sys.argv = argv
    # The snapshot was taken with `random` already seeded: without a fresh seed every task
    # would draw the same numbers.
    random.seed()
    program = {"__name__": "__main__", "__builtins__": builtins}
    try:
        code = compile(source, "<stdin>", "exec")
        exec(code, program)
    except SystemExit as stop:
        return exit_code(stop.code)
    except BaseException as error:  # noqa: BLE001 - any uncaught error is the program's failure
        # Drop this runner's own frame: the traceback starts in the task's program.
        traceback.print_exception(type(error), error, error.__traceback__.tb_next)
        return 1
    return 0


def exit_code(code) -> int:
    """What `sys.exit(code)` exits with: None is 0, an int is itself, anything else is printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


# Everything imported so far lives in the snapshot, shared copy-on-write by every task: moved
# out of the collector's reach, a task's garbage collection never writes to those pages.
gc.freeze()


class Run(exports.Run):
    def run(self) -> None:
        code = run_program(sys.stdin.buffer.read(), list(environment.get_arguments()))
        sys.stdout.flush()
        sys.stderr.flush()
        wasi_exit.exit_with_code(code)
