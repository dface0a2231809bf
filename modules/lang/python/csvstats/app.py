"""`csvstats`: an app baked into a module. Summarises a CSV table on stdin as one line of JSON.

The same report as the `csv2json` module, written in Python: `{"rows":N,"columns":[...]}` with,
per header column, `{"name","type":"number","count","min","max","sum","mean"}` when every
non-empty value is a finite number, else `{"name","type":"string","count","distinct"}`. Empty
values are not counted. Malformed input (a row with another number of fields, invalid UTF-8) is
reported on stderr with exit code 2.

Everything this app needs is imported at build time, so a task only runs `summarise`.
"""

import csv
import io
import json
import math
import sys

from wit_world import exports
from wit_world.imports import exit as wasi_exit


class MalformedCsv(Exception):
    """The input is not a CSV table with a header row."""


def number(value: str):
    """`value` as a finite float, or None."""
    try:
        parsed = float(value)
    except ValueError:
        return None
    return parsed if math.isfinite(parsed) else None


def column_report(name: str, values: list) -> dict:
    """The report of one column from its non-empty values."""
    numbers = [number(value) for value in values]
    if all(parsed is not None for parsed in numbers):
        total = math.fsum(numbers)
        return {
            "name": name,
            "type": "number",
            "count": len(numbers),
            "min": min(numbers) if numbers else None,
            "max": max(numbers) if numbers else None,
            "sum": total,
            "mean": total / len(numbers) if numbers else None,
        }
    return {"name": name, "type": "string", "count": len(values), "distinct": len(set(values))}


def summarise(text: str) -> dict:
    """The report of the CSV table `text`."""
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    if header is None:
        return {"rows": 0, "columns": []}
    values = [[] for _ in header]
    count = 0
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise MalformedCsv(f"record {line} has {len(row)} fields, the header has {len(header)}")
        count += 1
        for column, value in zip(values, row):
            if value != "":
                column.append(value)
    return {"rows": count, "columns": [column_report(n, v) for n, v in zip(header, values)]}


def main() -> int:
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
        report = summarise(text)
    except (UnicodeDecodeError, csv.Error, MalformedCsv) as error:
        print(f"csvstats: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(report, separators=(",", ":")) + "\n")
    return 0


class Run(exports.Run):
    def run(self) -> None:
        code = main()
        sys.stdout.flush()
        sys.stderr.flush()
        wasi_exit.exit_with_code(code)
