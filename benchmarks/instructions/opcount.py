"""Python bytecodes per function over the measured operations of ``work.py``.

    python opcount.py OUT.json WORKLOAD N          (PYTHONPATH=TREE, as for ab.py)
    python opcount.py --diff BEFORE.json AFTER.json N

Bytecodes do not depend on the machine's load or on CPython's caches, so the diff shows
which functions a change made longer; ``ab.py`` shows what that costs in instructions.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent


def record(out: str) -> None:
    counts: collections.Counter[str] = collections.Counter()
    active = [False]

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        code = frame.f_code
        key = f"{os.path.basename(code.co_filename)}:{code.co_name}"

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode" and active[0]:
                counts[key] += 1
            return local

        return local

    sys.path.insert(0, str(HERE))
    import work  # the module whose toggle() brackets the measured operations

    def toggle(on: bool) -> None:
        active[0] = on

    work.toggle = toggle
    sys.settrace(tracer)
    threading.settrace(tracer)
    try:
        asyncio.run(work.main(sys.argv[2], int(sys.argv[3])))
    finally:
        sys.settrace(None)
        threading.settrace(None)
        Path(out).write_text(json.dumps(dict(counts)))


def diff(before_path: str, after_path: str, n: int) -> None:
    before = json.loads(Path(before_path).read_text())
    after = json.loads(Path(after_path).read_text())
    total_b, total_a = sum(before.values()) / n, sum(after.values()) / n
    print(f"bytecodes per operation: {total_b:.0f} -> {total_a:.0f} ({total_a / total_b:.3f})")
    keys = sorted(set(before) | set(after), key=lambda k: -abs(after.get(k, 0) - before.get(k, 0)))
    for key in keys[:40]:
        b, a = before.get(key, 0) / n, after.get(key, 0) / n
        print(f"{b:9.1f} {a:9.1f} {a - b:+9.1f}  {key}")


if __name__ == "__main__":
    if sys.argv[1] == "--diff":
        diff(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        record(sys.argv[1])
