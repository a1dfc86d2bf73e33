"""Turn pytest-benchmark JSON into the ratio table of ``benchmarks/README.md``.

Roles come from ``extra_info["role"]`` ("ours", "limit", "peer"); entries of older
files without it are classified by name. For each group: every entry's mean time,
ours / forward limit and ours / forward+backward limit (the group's first limit entry
without and with "backward" in its name), and each peer / ours, where the peer names
the entry of ours it does the job of in ``extra_info["versus"]``.

    .venv/bin/python benchmarks/report.py benchmarks/results/latest.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

README = Path(__file__).with_name("README.md")
BEGIN, END = "<!-- ratio-table:begin -->", "<!-- ratio-table:end -->"


def role_of(entry: dict) -> str:
    role = entry.get("extra_info", {}).get("role")
    if role:
        return role
    name = entry["name"].lower()
    if any(k in name for k in ("bare_forward", "limit", "forward_fused")):
        return "limit"
    if any(k in name for k in ("pytorch_grad_cam", "torchcam", "per_step_loop", "captum")):
        return "peer"
    return "ours"


def label_of(entry: dict) -> str:
    return entry.get("extra_info", {}).get("method") or entry["name"].removeprefix("test_")


def table(results: dict) -> str:
    groups: dict[str, list[dict]] = {}
    for entry in results["benchmarks"]:
        groups.setdefault(entry["group"] or "-", []).append(entry)
    lines = [
        f"Machine: {results['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
        f"{results['machine_info'].get('system', '')}; run {results.get('datetime', '')[:19]}.",
        "",
        "| group | entry | role | mean (s) | vs forward | vs forward+backward | peer / ours |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for group, entries in groups.items():
        means = {label_of(e): e["stats"]["mean"] for e in entries}
        forward = next(
            (
                means[label_of(e)]
                for e in entries
                if role_of(e) == "limit" and "backward" not in label_of(e)
            ),
            None,
        )
        backward = next(
            (
                means[label_of(e)]
                for e in entries
                if role_of(e) == "limit" and "backward" in label_of(e)
            ),
            None,
        )
        for entry in sorted(entries, key=lambda e: ("limit", "ours", "peer").index(role_of(e))):
            mean = entry["stats"]["mean"]
            vs_f = f"{mean / forward:.2f}x" if forward else "-"
            vs_b = f"{mean / backward:.2f}x" if backward else "-"
            versus = means.get(entry.get("extra_info", {}).get("versus", ""))
            vs_ours = f"{mean / versus:.2f}x" if versus and role_of(entry) == "peer" else "-"
            lines.append(
                f"| {group} | {label_of(entry)} | {role_of(entry)} | {mean:.4f} | {vs_f} "
                f"| {vs_b} | {vs_ours} |"
            )
    return "\n".join(lines)


def main(path: str) -> None:
    results = json.loads(Path(path).read_text())
    text = README.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")
    print(table(results))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/latest.json")
