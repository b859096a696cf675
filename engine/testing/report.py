"""The results of `streamdag test` as text (like pytest's) or as JUnit XML for CI."""

from __future__ import annotations

import os
from typing import TextIO
from xml.etree import ElementTree as ET

from engine.compile.diagnostics import Diagnostic
from engine.testing.runner import CaseResult

__all__ = ["junit_report", "text_report"]


def text_report(results: list[CaseResult], invalid: dict[str, list[Diagnostic]], seconds: float, out: TextIO,
                verbose: bool = True) -> None:
    """One line per case (PASSED/FAILED), then each failure with file:line and its diff, then a tally."""
    for path, diags in invalid.items():
        print(f"{path} INVALID", file=out)
        for d in diags:
            print(f"  {d.format()}", file=out)
    if verbose:
        for r in results:
            print(f"{r.file}::{r.name} {'PASSED' if r.passed else 'FAILED'}", file=out)
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"{' FAILURES ':=^79}", file=out)
    for r in failed:
        print(f"{' ' + os.path.basename(r.file) + '::' + r.name + ' ':_^79}", file=out)
        for f in r.failures:
            print(f"{r.file}:{f.line}: {f.message}", file=out)
            if f.diff:
                print(f.diff if f.diff.startswith(" ") else "\n".join("  " + ln for ln in f.diff.splitlines()),
                      file=out)
    parts = [f"{len(failed)} failed"] if failed else []
    parts.append(f"{len(results) - len(failed)} passed")
    if invalid:
        parts.append(f"{len(invalid)} invalid file(s)")
    print(f"{' ' + ', '.join(parts) + f' in {seconds:.2f}s ':=^79}", file=out)


def junit_report(results: list[CaseResult], invalid: dict[str, list[Diagnostic]]) -> str:
    """One <testsuite> per test file, one <testcase> per case; an invalid file is one errored case."""
    root = ET.Element("testsuites", name="streamdag test")
    files = list(dict.fromkeys([r.file for r in results] + list(invalid)))
    for path in files:
        cases = [r for r in results if r.file == path]
        suite = ET.SubElement(root, "testsuite", name=path, tests=str(max(len(cases), 1)),
                              failures=str(sum(not r.passed for r in cases)),
                              errors=str(int(path in invalid)), time=f"{sum(r.seconds for r in cases):.3f}")
        if path in invalid:
            tc = ET.SubElement(suite, "testcase", classname=_classname(path), name="(test file)", time="0")
            text = "\n".join(d.format() for d in invalid[path])
            ET.SubElement(tc, "error", message=text.splitlines()[0] if text else "invalid", type="invalid").text = text
        for r in cases:
            tc = ET.SubElement(suite, "testcase", classname=_classname(path), name=r.name, time=f"{r.seconds:.3f}",
                               file=r.file, line=str(r.line))
            if not r.passed:
                body = "\n\n".join(f"{r.file}:{f.line}: {f.message}" + (f"\n{f.diff}" if f.diff else "")
                                   for f in r.failures)
                ET.SubElement(tc, "failure", message=r.failures[0].message, type="expectation").text = body
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _classname(path: str) -> str:
    name = os.path.basename(path)
    return name.removesuffix(".yaml").removesuffix(".yml").replace(".", "_")
