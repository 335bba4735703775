#!/usr/bin/env python3
"""Where a callgrind profile's instructions go, instruction by instruction.

    KEEP=/tmp/cg CALLGRIND_FLAGS=--dump-instr=yes TESTS=set scripts/callgrind.sh
    scripts/callgrind-asm.py /tmp/cg/callgrind.guards-off.set target/release/respguard \
        --commands 100000 [--top 20] [--function on_client_input]

Sums each instruction's own cost (calls excluded) in the respguard binary (the very build
the profile was taken with: addresses change with every build), prints the
functions that spend the most per command and, with --function, every instruction of the
functions whose name contains that text beside its cost per command: what
`callgrind_annotate` cannot show once the compiler has inlined a path into one function.
"""
import argparse
import collections
import re
import subprocess


def own_costs(profile):
    """Instruction address -> own cost, for the respguard binary."""
    costs = collections.Counter()
    objects, current, addr, after_call = {}, None, 0, False
    for line in open(profile):
        if line.startswith("cob=("):
            # A called object may be named here first, before any `ob=` line names it.
            m = re.match(r"cob=\((\d+)\) (.*)", line.strip())
            if m:
                objects[m.group(1)] = m.group(2)
            continue
        if line.startswith("ob="):
            m = re.match(r"ob=\((\d+)\)(?: (.*))?", line.strip())
            if m.group(2):
                objects[m.group(1)] = m.group(2)
            current = objects.get(m.group(1))
            continue
        if line.startswith("calls="):
            after_call = True
            continue
        m = re.match(r"^(0x[0-9a-f]+|[+-]\d+|\*)\s+\S+\s+(\d+)", line)
        if not m:
            continue
        where, cost = m.groups()
        if where.startswith("0x"):
            addr = int(where, 16)
        elif where[0] in "+-":
            addr += int(where)
        if after_call:
            after_call = False  # a call's inclusive cost, not this instruction's own
            continue
        if current and "respguard" in current.rsplit("/", 1)[-1]:
            costs[addr] += int(cost)
    return costs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile")
    p.add_argument("binary")
    p.add_argument("--commands", type=int, required=True)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--function")
    a = p.parse_args()
    costs = own_costs(a.profile)
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", a.binary],
                             capture_output=True, text=True, check=True).stdout
    function, rows = None, []
    for line in listing.splitlines():
        m = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if m:
            function = m.group(2)
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
        if m and costs.get(int(m.group(1), 16)):
            rows.append((int(m.group(1), 16), function, m.group(2)))
    per_function = collections.Counter()
    for addr, function, _ in rows:
        per_function[function] += costs[addr]
    print(f"{sum(costs.values()) / a.commands:8.1f}  in the binary, per command")
    for function, cost in per_function.most_common(a.top):
        print(f"{cost / a.commands:8.1f}  {function[:140]}")
    if a.function:
        for addr, function, text in rows:
            if a.function in function:
                print(f"{costs[addr] / a.commands:6.2f} {addr:x} {text}")


if __name__ == "__main__":
    main()
