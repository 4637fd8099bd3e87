#!/usr/bin/env python3
"""The npm package's size broken down by where its code comes from: writes bench/size.json and bench/SIZE.md.

    python3 bench/browser/size_breakdown.py        (from the repository root; needs scripts/install.sh's tools,
                                                    twiggy (`cargo install twiggy`) and llvm-dwarfdump (Debian llvm))

Three views (written to bench/size.json, and as tables into bench/SIZE.md between its markers), each of the
shipped build (scripts/build-npm.sh web, scripts/size.sh):

1. The package: .wasm and JS glue, raw and gzip -9 (scripts/size.sh).
2. `twiggy top` of the same .wasm with its function names kept (wasm-opt -g; names are not shipped).
3. Code bytes by source file: the crate is rebuilt with line tables (target/size-breakdown), each byte of code is
   attributed to the file its DWARF line row names (inlined code counts for the file it was inlined from), and
   only functions that survive wasm-bindgen count. These are bytes before wasm-opt (which shrinks the whole by
   ~10 %), so read them as shares, not as exact gzipped savings.
It reports; it never fails on a figure.
"""
import bisect
import collections
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OPT = ["-Oz", "--flatten", "--rereloop", "--merge-blocks", "-Oz", "-Oz", "--low-memory-unused", "--converge",
       "--enable-bulk-memory", "--enable-multivalue", "--enable-mutable-globals",
       "--enable-nontrapping-float-to-int", "--enable-reference-types", "--enable-sign-ext"]


def run(*cmd, env=None, capture=True):
    return subprocess.run(cmd, cwd=ROOT, env=env, check=True, text=True,
                          stdout=subprocess.PIPE if capture else None).stdout


def functions(path):
    """[(start, end, name)] of a .wasm's code section (offsets relative to the section, as DWARF uses them)."""
    data = open(path, "rb").read()

    def leb(p):
        r = s = 0
        while True:
            b = data[p]
            p += 1
            r |= (b & 0x7F) << s
            s += 7
            if b < 0x80:
                return r, p

    pos, secs, imported = 8, {}, 0
    while pos < len(data):
        sid = data[pos]
        size, pos = leb(pos + 1)
        end = pos + size
        if sid == 0:
            n, p = leb(pos)
            secs[data[p:p + n].decode()] = (p + n, end)
        else:
            secs[sid] = (pos, end)
        pos = end
    p, _ = secs[2]
    count, p = leb(p)
    for _ in range(count):
        for _ in range(2):
            n, p = leb(p)
            p += n
        kind = data[p]
        p += 1
        if kind == 0:
            _, p = leb(p)
            imported += 1
        elif kind in (1, 2):
            p += kind == 1
            flags = data[p]
            _, p = leb(p + 1)
            if flags & 1:
                _, p = leb(p)
        else:
            p += 2
    names = {}
    p, end = secs.get("name", (0, 0))
    while p < end:
        sub = data[p]
        size, p = leb(p + 1)
        if sub == 1:
            count, q = leb(p)
            for _ in range(count):
                idx, q = leb(q)
                n, q = leb(q)
                names[idx] = data[q:q + n].decode("utf8", "replace")
                q += n
        p += size
    start, _ = secs[10]
    count, p = leb(start)
    out = []
    for i in range(count):
        size, q = leb(p)
        out.append((p - start, q + size - start, names.get(imported + i, "?")))
        p = q + size
    return out


def short(path):
    path = re.sub(r"^.*/library/", "std/", path)
    path = re.sub(r"^.*/registry/src/[^/]+/", "", path)
    return path.replace(ROOT + "/", "")


BEGIN = "<!-- size_breakdown.py: begin -->"
END = "<!-- size_breakdown.py: end -->"

AREAS = [
    (r"^client-core/src/codec/", "sockeye-core: wire codec (envelope, CBOR walk, frames, fragments)"),
    (r"^client-core/", "sockeye-core: connection state machine (requests, queue, topics, backoff, config)"),
    (r"^client-wasm/src/shell(\.rs|/)", "sockeye-wasm: shell (socket, timer, callbacks, promises)"),
    (r"^client-wasm/", "sockeye-wasm: exports, errors, options, payload glue"),
    (r"^std/(alloc|core)/src/(vec|raw_vec|collections|ptr|boxed|rc|string|slice|str|alloc|borrow)",
     "std: generic collections and drop glue, instantiated per type"),
    (r"^(wasm-bindgen|js-sys|web-sys|src/)", "wasm-bindgen runtime and JS bindings"),
    (r"^talc", "allocator (talc)"),
    (r"", "std: other (iterators, Option/Result, cells, ...)"),
]


def attribute(rustc_wasm, shipped_names):
    lines = run("llvm-dwarfdump", "--debug-line", rustc_wasm)
    funcs = functions(rustc_wasm)
    starts = [f[0] for f in funcs]
    hashes = {m.group(1) for n in shipped_names for m in [re.search(r"h([0-9a-f]{16})$", n)] if m}
    by_file = collections.Counter()
    for unit in lines.split("debug_line[")[1:]:
        dirs = {int(i): d for i, d in re.findall(r'include_directories\[\s*(\d+)\] = "([^"]*)"', unit)}
        files = {int(i): short(dirs.get(int(d), "") + "/" + n)
                 for i, n, d in re.findall(r'file_names\[\s*(\d+)\]:\s*\n\s*name: "([^"]*)"\s*\n\s*dir_index: (\d+)', unit)}
        prev = None
        for addr, file, end in re.findall(r"^0x([0-9a-f]+)\s+\d+\s+\d+\s+(\d+)\s.*?(end_sequence)?$", unit, re.M):
            a = int(addr, 16)
            if prev is not None:
                i = bisect.bisect_right(starts, prev[0]) - 1
                m = re.search(r"17h([0-9a-f]{16})E", funcs[i][2]) if i >= 0 else None
                if m and m.group(1) in hashes:
                    by_file[prev[1]] += a - prev[0]
            prev = None if end else (a, files.get(int(file), "?"))
    return by_file


def main():
    sizes = run("scripts/size.sh", "client-wasm/pkg")
    m = re.search(r"bytes: wasm (\d+) / (\d+) gz, glue (\d+) / (\d+) gz", sizes)
    wasm_raw, wasm_gz, glue_raw, glue_gz = map(int, m.groups())

    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target/size-breakdown"),
               CARGO_PROFILE_WASM_RELEASE_DEBUG="line-tables-only", CARGO_PROFILE_WASM_RELEASE_STRIP="none")
    # As scripts/build-npm.sh builds it: without `std`.
    run("cargo", "build", "-q", "-p", "sockeye-wasm", "--lib", "--target", "wasm32-unknown-unknown",
        "--profile", "wasm-release", "--no-default-features", env=env, capture=False)
    rustc_wasm = os.path.join(env["CARGO_TARGET_DIR"], "wasm32-unknown-unknown/wasm-release/sockeye_wasm.wasm")
    with tempfile.TemporaryDirectory() as tmp:
        run("wasm-bindgen", "--target", "web", "--out-dir", tmp, "--out-name", "sockeye", rustc_wasm)
        bound = os.path.join(tmp, "sockeye_bg.wasm")
        named = os.path.join(tmp, "named.wasm")
        run("wasm-opt", bound, "-o", named, "-g", *OPT)
        shipped_names = [f[2] for f in functions(bound)]
        twiggy = json.loads(run("twiggy", "top", "-n", "26", "-f", "json", named))
        by_file = attribute(rustc_wasm, shipped_names)

    total = sum(by_file.values())
    areas = collections.Counter()
    for file, n in by_file.items():
        areas[next(name for pattern, name in AREAS if re.search(pattern, file))] += n
    report = {
        "package": {"wasm_bytes": wasm_raw, "wasm_gzip": wasm_gz, "glue_bytes": glue_raw, "glue_gzip": glue_gz,
                    "total_gzip": wasm_gz + glue_gz},
        "code_by_area_pre_wasm_opt": dict(areas.most_common()),
        "code_by_file_pre_wasm_opt": dict(collections.Counter({short(f): n for f, n in by_file.items()}).most_common(40)),
        # Without the name section, which only this analysis keeps.
        "twiggy_top": [{"bytes": r["shallow_size"], "item": r["name"]} for r in twiggy if "names" not in r["name"]],
    }
    with open(os.path.join(ROOT, "bench/size.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    kb = lambda n: f"{n / 1000:.1f} KB"
    md = ["## Package size: the breakdown (generated by bench/browser/size_breakdown.py)", "",
          "| part | raw | gzip -9 |", "|---|---|---|",
          f"| `.wasm` | {kb(wasm_raw)} | {kb(wasm_gz)} |", f"| JS glue | {kb(glue_raw)} | {kb(glue_gz)} |",
          f"| **total** | {kb(wasm_raw + glue_raw)} | **{kb(wasm_gz + glue_gz)}** |", "",
          "Code by where it comes from (bytes of code before wasm-opt, attributed through DWARF line tables; "
          "inlined code counts where it was written; std's precompiled formatting and panic functions carry no "
          "hash to match them by and are left out: see twiggy's list):", "", "| area | code bytes | share |",
          "|---|---|---|"]
    md += [f"| {a} | {n} | {100 * n / total:.0f} % |" for a, n in areas.most_common()]
    md += ["", "The largest source files:", "", "| file | code bytes |", "|---|---|"]
    md += [f"| `{f}` | {n} |" for f, n in list(report["code_by_file_pre_wasm_opt"].items())[:20]]
    md += ["", "`twiggy top` of the shipped `.wasm` (names kept for the analysis; LTO and wasm-opt inline most of the "
           "shell and the core into a few functions):", "", "| bytes | item |", "|---|---|"]
    md += [f"| {r['bytes']} | `{r['item'][:100]}` |" for r in report["twiggy_top"]]
    # Into bench/SIZE.md between the markers (the text around them is written by hand).
    path = os.path.join(ROOT, "bench/SIZE.md")
    text = open(path).read() if os.path.exists(path) else f"{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    with open(path, "w") as f:
        f.write(head + BEGIN + "\n" + "\n".join(md) + "\n" + END + rest.split(END, 1)[1])
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
