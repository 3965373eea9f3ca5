#!/usr/bin/env python3
"""Detection figures of a rule pack, by technique.

Two measurements, printed as tables:

* Recall on labelled attack procedures (`TTPFLOW_DETECTION_DIR`, default ../shared/detection,
  file atomic-linux-dev.json): each test becomes one `attacker.session.ended` event of an
  anchored attacker whose commands are the test's lines; a test is detected when a tag of its
  session names its technique at the parent level (T1059.004 matches T1059 and T1059.xxx).
  Also counted: tests tagged only with other techniques.
* Precision on DECNET's labelled precision corpus (`TTPFLOW_CONFORMANCE_DIR`, default
  ../shared/conformance, corpus/precision_*.jsonl), judged by technique: a positive row is found
  when one of its tags names a technique of one of its expected rules (read from DECNET's pack),
  a negative row must get no tag. Per rule of the pack: rows tagged, and how many of them were
  negative rows.

    benches/recall.py [--bin PATH] [--rules DIR] [--detection FILE] [--verbose]

The binary defaults to the release build in CARGO_TARGET_DIR (or target/).
"""

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def default_bin():
    target = os.environ.get("CARGO_TARGET_DIR") or str(
        pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "ttpflow" / "target"
    )
    for candidate in (pathlib.Path(target) / "release" / "ttpflow", ROOT / "target" / "release" / "ttpflow"):
        if candidate.exists():
            return str(candidate)
    sys.exit("no release binary found: build with cargo build --release, or pass --bin")


def run(binary, rules, records, work):
    """Runs the pack over `records` (dicts); returns the tags."""
    inp = work / "input.jsonl"
    with inp.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    out = work / "out"
    subprocess.run(
        [binary, "run", "--rules", str(rules), "--input", str(inp), "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with (out / "tags.jsonl").open() as f:
        return [json.loads(line) for line in f]


def parent(technique):
    return technique.split(".")[0]


def atomic_records(tests):
    records = []
    for i, test in enumerate(tests):
        attacker = f"atomic-{i}"
        records.append(
            {"topic": "decnet.attackers", "key": attacker, "value": {"uuid": attacker, "ip": f"10.77.{i // 250}.{i % 250}"}}
        )
    for i, test in enumerate(tests):
        commands = [{"command_text": c, "id": f"atomic-{i}-cmd{j}"} for j, c in enumerate(test["commands"])]
        payload = {"attacker_uuid": f"atomic-{i}", "session_id": f"atomic-{i}", "commands": commands}
        records.append({"topic": "attacker.session.ended", "type": "session.ended", "payload": payload})
    return records


def recall(binary, rules, detection, verbose):
    tests = json.loads(pathlib.Path(detection).read_text())
    with tempfile.TemporaryDirectory() as work:
        tags = run(binary, rules, atomic_records(tests), pathlib.Path(work))
    emitted = set()
    for path in pathlib.Path(rules).glob("*.y*ml"):
        for line in path.read_text().splitlines():
            line = line.strip().lstrip("- ")
            if line.startswith("technique_id:") or line.startswith("sub_technique_id:"):
                emitted.add(parent(line.split(":", 1)[1].strip().strip("'\"")))
    by_session = collections.defaultdict(set)
    for t in tags:
        if t.get("session_id"):
            by_session[t["session_id"]].add(parent(t["technique_id"]))
    per = collections.defaultdict(lambda: [0, 0, 0])  # tests, detected, only other techniques
    detected = other = in_scope = in_scope_detected = 0
    for i, test in enumerate(tests):
        label = parent(test["technique"])
        got = by_session.get(f"atomic-{i}", set())
        row = per[test["technique"]]
        row[0] += 1
        hit = label in got
        if hit:
            row[1] += 1
            detected += 1
        elif got:
            row[2] += 1
            other += 1
        if label in emitted:
            in_scope += 1
            in_scope_detected += hit
        if verbose and not hit:
            print(f"  miss {test['technique']} {test['test']!r}: got {sorted(got)}", file=sys.stderr)
    print(f"{'technique':<12} {'tests':>5} {'found':>5} {'other':>5}")
    for technique in sorted(per):
        n, hit, oth = per[technique]
        print(f"{technique:<12} {n:>5} {hit:>5} {oth:>5}")
    n = len(tests)
    print(
        f"recall={detected / n:.3f} ({detected}/{n}) "
        f"in_scope_recall={in_scope_detected / max(in_scope, 1):.3f} ({in_scope_detected}/{in_scope}) "
        f"other_only={other / n:.3f} ({other}/{n})"
    )


def precision(binary, rules, conformance, verbose):
    corpus = pathlib.Path(conformance) / "corpus"
    tables = [json.loads(line) for line in (corpus / "precision_tables.jsonl").open()]
    rows = [json.loads(line) for line in (corpus / "precision_events.jsonl").open()]
    techniques_of_rule = {}
    for path in (pathlib.Path(conformance) / "decnet" / "rules").glob("*.y*ml"):
        rule_id, techniques = None, set()
        for line in path.read_text().splitlines():
            s = line.strip().lstrip("- ")
            if s.startswith("rule_id:"):
                rule_id = s.split(":", 1)[1].strip().strip("'\"")
            if s.startswith("technique_id:"):
                techniques.add(s.split(":", 1)[1].strip().strip("'\""))
        if rule_id:
            techniques_of_rule[rule_id] = techniques
    # Every row has an attacker of its own: by uuid in the payload, or by IP through the tables.
    by_ip = {t["value"]["ip"]: t["value"]["uuid"] for t in tables if t.get("topic") == "decnet.attackers" and t.get("value")}
    attacker_of = {}
    for i, row in enumerate(rows):
        p = row["payload"]
        attacker_of[i] = p.get("attacker_uuid") or by_ip.get(p.get("attacker_ip") or p.get("src_ip"))
    records = tables + [{"topic": r["topic"], "type": r.get("type", ""), "payload": r["payload"]} for r in rows]
    with tempfile.TemporaryDirectory() as work:
        tags = run(binary, rules, records, pathlib.Path(work))
    by_attacker = collections.defaultdict(list)
    for t in tags:
        by_attacker[t.get("attacker_uuid")].append(t)
    by_row = {i: by_attacker.get(a, []) if a else [] for i, a in attacker_of.items()}
    positives = found = negatives = negatives_tagged = 0
    per_rule = collections.defaultdict(lambda: [0, 0])
    for i, row in enumerate(rows):
        got = {t["technique_id"] for t in by_row.get(i, [])}
        for rule in {t["rule_id"] for t in by_row.get(i, [])}:
            per_rule[rule][0] += 1
            per_rule[rule][1] += not row["expected_rule_ids"]
        if row["expected_rule_ids"]:
            positives += 1
            want = set().union(*(techniques_of_rule.get(r, set()) for r in row["expected_rule_ids"]))
            if got & want:
                found += 1
            elif verbose:
                print(f"  miss {row['label']} (want {sorted(want)}, got {sorted(got)})", file=sys.stderr)
        else:
            negatives += 1
            if got:
                negatives_tagged += 1
                if verbose:
                    print(f"  negative {row['label']} tagged {sorted(got)}", file=sys.stderr)
    print(f"{'rule':<8} {'rows':>5} {'negative':>8}")
    for rule in sorted(per_rule):
        print(f"{rule:<8} {per_rule[rule][0]:>5} {per_rule[rule][1]:>8}")
    print(f"positives_found={found}/{positives} negatives_tagged={negatives_tagged}/{negatives}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=None)
    p.add_argument("--rules", default=str(ROOT / "rules"))
    p.add_argument("--detection", default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    binary = args.bin or default_bin()
    detection_dir = os.environ.get("TTPFLOW_DETECTION_DIR", str(ROOT.parent / "shared" / "detection"))
    detection = args.detection or str(pathlib.Path(detection_dir) / "atomic-linux-dev.json")
    conformance = os.environ.get("TTPFLOW_CONFORMANCE_DIR", str(ROOT.parent / "shared" / "conformance"))
    print("== recall on labelled procedures")
    recall(binary, args.rules, detection, args.verbose)
    print("== precision corpus, by technique")
    precision(binary, args.rules, conformance, args.verbose)


if __name__ == "__main__":
    main()
