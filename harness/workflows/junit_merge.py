"""Merge JUnit files of several targets into one ``<testsuites>``; each test case names its target.

A case's target comes from its own ``target`` property (pytest-xdist runs set it), else from its suite's
``target`` property (the target's facts), else from the file name.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

from ..results.junit_read import JUnitError

log = logging.getLogger(__name__)


def _props(elem: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for c in elem.findall("properties") for p in c.findall("property")}


def _add_property(case: ET.Element, name: str, value: str) -> None:
    container = case.find("properties")
    if container is None:
        container = ET.Element("properties")
        case.insert(0, container)
    ET.SubElement(container, "property", name=name, value=value)


def merge_junit(files: Sequence[Path], out: Path) -> int:
    """Write the merged report to ``out``; return the number of test cases."""
    root = ET.Element("testsuites")
    cases = 0
    for path in files:
        try:
            tree = ET.parse(path)
        except (OSError, ET.ParseError) as err:
            raise JUnitError(f"cannot merge {path}: {err}; pass JUnit files written by kvmh") from None
        top = tree.getroot()
        suites = [top] if top.tag == "testsuite" else list(top.iter("testsuite"))
        for suite in suites:
            suite_target = _props(suite).get("target") or Path(path).stem.removeprefix("junit-")
            for case in suite.findall("testcase"):
                if "target" not in _props(case):
                    _add_property(case, "target", suite_target)
                cases += 1
            suite.set("name", f"{suite.get('name', 'pytest')} [{suite_target}]")
            root.append(suite)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    log.info("merged %d cases from %d files into %s", cases, len(files), out)
    return cases
