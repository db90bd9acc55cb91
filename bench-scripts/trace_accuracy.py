#!/usr/bin/env python3
"""Share of time whose prediction was within 30%, over a whole SMEPILOT_TRACE=1 log.

Reads the per-op trace lines ("pred= ...us est= ...us meas= ...us"), sums measured time
per op class, and reports which share of the total measured time came from ops predicted
within +-30% (|meas / pred - 1| <= 0.3), overall and per op class: for the planner's
estimates (the model corrected by earlier measurements, made before each op ran) and for
the roofline model alone.

    SMEPILOT_TRACE=1 build/bin/llama-bench --backend smepilot -m M -p 512 -n 128 -r 1 2> trace.log
    bench-scripts/trace_accuracy.py trace.log
"""

import re
import sys
from collections import defaultdict

LINE = re.compile(r"smepilot trace: (\S+)\s+(.*?)\s+mode=(\w+)\s+pred=\s*([0-9.]+)us est=\s*([0-9.]+)us meas=\s*([0-9.]+)us")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    total = 0.0
    within = {"est": 0.0, "pred": 0.0}
    per_class = defaultdict(lambda: {"meas": 0.0, "pred": 0.0, "ok_est": 0.0, "ok_pred": 0.0})
    n = 0
    ok = lambda p, meas: p > 0 and abs(meas / p - 1.0) <= 0.3
    with open(sys.argv[1], errors="replace") as f:
        for line in f:
            m = LINE.search(line)
            if not m:
                continue
            op, pred, est, meas = m.group(1), float(m.group(4)), float(m.group(5)), float(m.group(6))
            total += meas
            c = per_class[op]
            c["meas"] += meas
            c["pred"] += pred
            for key, p in (("est", est), ("pred", pred)):
                if ok(p, meas):
                    within[key] += meas
                    c["ok_" + key] += meas
            n += 1
    if n == 0:
        sys.exit("no trace lines (run with SMEPILOT_TRACE=1)")
    total = max(total, 1e-9)
    print(f"{n} op executions, {total / 1e6:.2f} s measured; within 30% for {100 * within['est'] / total:.1f}% of the time "
          f"as the planner estimated, {100 * within['pred'] / total:.1f}% as the model alone predicted")
    for op, c in sorted(per_class.items(), key=lambda kv: -kv[1]["meas"]):
        c["meas"] = max(c["meas"], 1e-9)  # a class whose every run printed 0.0us
        print(f"  {op:16} {100 * c['meas'] / total:5.1f}% of time, within 30%: estimated {100 * c['ok_est'] / c['meas']:5.1f}%, "
              f"model {100 * c['ok_pred'] / c['meas']:5.1f}% (sum pred / sum meas {c['pred'] / c['meas']:.2f})")


if __name__ == "__main__":
    main()
