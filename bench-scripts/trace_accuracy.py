#!/usr/bin/env python3
"""Share of time whose prediction was within 30%, over a whole SMEPILOT_TRACE=1 log.

Reads the per-op trace lines ("pred= ...us meas= ...us"), sums measured time per op
class, and reports which share of the total measured time came from ops predicted
within +-30% (|meas / pred - 1| <= 0.3), overall and per op class.

    SMEPILOT_TRACE=1 build/bin/llama-bench --backend smepilot -m M -p 512 -n 128 -r 1 2> trace.log
    bench-scripts/trace_accuracy.py trace.log
"""

import re
import sys
from collections import defaultdict

LINE = re.compile(r"smepilot trace: (\S+)\s+(.*?)\s+mode=(\w+)\s+pred=\s*([0-9.]+)us meas=\s*([0-9.]+)us")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    total = within = 0.0
    per_class = defaultdict(lambda: [0.0, 0.0, 0.0])  # measured, within, predicted
    n = 0
    with open(sys.argv[1], errors="replace") as f:
        for line in f:
            m = LINE.search(line)
            if not m:
                continue
            op, pred, meas = m.group(1), float(m.group(4)), float(m.group(5))
            ok = pred > 0 and abs(meas / pred - 1.0) <= 0.3
            total += meas
            within += meas if ok else 0.0
            c = per_class[op]
            c[0] += meas
            c[1] += meas if ok else 0.0
            c[2] += pred
            n += 1
    if n == 0:
        sys.exit("no trace lines (run with SMEPILOT_TRACE=1)")
    print(f"{n} op executions, {total / 1e6:.2f} s measured; predicted within 30% for {100 * within / total:.1f}% of the time")
    for op, (meas, ok, pred) in sorted(per_class.items(), key=lambda kv: -kv[1][0]):
        print(f"  {op:16} {100 * meas / total:5.1f}% of time, within 30%: {100 * ok / meas:5.1f}%, sum pred / sum meas {pred / meas:.2f}")


if __name__ == "__main__":
    main()
