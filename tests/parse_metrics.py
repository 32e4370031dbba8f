"""Parses Prometheus text exposition on stdin with the Prometheus Python client's parser.

Prints one tab-separated line per family (`family NAME TYPE HELP`) and per sample
(`sample NAME LABELS VALUE`, labels as `k=v` joined by commas, sorted) for tests/metrics.rs
to check. A line the parser refuses makes it raise, and this script exit non-zero.
"""

import sys

from prometheus_client.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    print(f"family\t{family.name}\t{family.type}\t{family.documentation}")
    for sample in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
        print(f"sample\t{sample.name}\t{labels}\t{sample.value!r}")
