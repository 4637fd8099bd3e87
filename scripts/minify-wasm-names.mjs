// Renames the imports and exports of a wasm-bindgen package's .wasm to short names, in the .wasm, its JS glue and
// its typings alike:
//
//   node scripts/minify-wasm-names.mjs DIR      (DIR: a wasm-pack output directory; scripts/build-npm.sh runs it)
//
// Why: wasm-bindgen names every import `__wbg_<name>_<16 hex digits>`. The hashes cannot be compressed, and each
// name is stored twice (the .wasm's import section, the glue's import object or exports): 1.6 KB of the gzipped
// package for 44 imports; the exports' long names (`client_subscribeToTransitions`, `__wbindgen_malloc`, read as
// `wasm.NAME` by the glue) another 0.35 KB. Emscripten's optimized builds minify these names the same way. In the
// `--target web` build, whose glue hands the imports over as one object keyed by module name, the module names
// (`./sockeye_bg.js`, `./snippets/<crate>-<hash>/js/errors.js`, repeated for every import) become `a`, `b`, … too:
// 0.14 KB. The `bundler` build keeps them: there they are the paths of the ES modules the bundler resolves.
//
// Only the import and export sections of the .wasm change; every other section is copied byte for byte. In the
// glue, each old import name is replaced where it stands as a whole identifier and each export where it is read as
// `wasm.NAME`; the typings' declarations of the exports follow. The script fails if an import name is not found in
// the glue, if a `wasm.NAME` is left that is not an export, or if a new name already occurs (so a wasm-bindgen that
// changes its glue's shape is noticed, not shipped broken).
import { readFileSync, writeFileSync, readdirSync } from "node:fs";
import path from "node:path";

const dir = process.argv[2];
if (!dir) throw new Error("usage: node scripts/minify-wasm-names.mjs DIR");
const wasmFile = readdirSync(dir).find((f) => f.endsWith(".wasm"));
const glueFiles = readdirSync(dir).filter((f) => f.endsWith(".js"));
const wasm = readFileSync(path.join(dir, wasmFile));
const glue = Object.fromEntries(glueFiles.map((f) => [f, readFileSync(path.join(dir, f), "utf8")]));

function leb(bytes, pos) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const b = bytes[pos++];
    value += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if (b < 0x80) return [value, pos];
  }
}
function toLeb(value) {
  const out = [];
  do {
    let b = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) b |= 0x80;
    out.push(b);
  } while (value > 0);
  return out;
}
const utf8 = new TextDecoder();
const encode = (s) => new TextEncoder().encode(s);

// The module wasm-bindgen's glue provides the imports under (the `--target web` and `bundler` builds alike).
const GLUE_MODULE = `./${wasmFile.replace(/\.wasm$/, ".js")}`;
// Short names no identifier in the glue uses: `$` followed by base-36 digits.
const shortName = (i) => `$${i.toString(36)}`;
// A module name as a key of the web glue's imports object (`"./sockeye_bg.js": import0,`).
const moduleKey = (name) => new RegExp(`"${name.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}":`, "g");
const webGlue = Object.values(glue).some((text) => moduleKey(GLUE_MODULE).test(text));
const moduleRenames = new Map();

let pos = 8;
const parts = [wasm.subarray(0, 8)];
const renames = new Map();
const exportRenames = new Map();
while (pos < wasm.length) {
  const id = wasm[pos];
  const [size, start] = leb(wasm, pos + 1);
  const end = start + size;
  if (id === 7) {
    // The export section: count, then (name, kind, index) each. Every export gets a short name too.
    let p = start;
    let count;
    [count, p] = leb(wasm, p);
    const body = [...toLeb(count)];
    for (let i = 0; i < count; i++) {
      let len;
      [len, p] = leb(wasm, p);
      const name = utf8.decode(wasm.subarray(p, p + len));
      p += len;
      const descStart = p;
      [, p] = leb(wasm, p + 1); // kind, index
      exportRenames.set(name, `$${exportRenames.size.toString(36)}`);
      const newName = encode(exportRenames.get(name));
      body.push(...toLeb(newName.length), ...newName, ...wasm.subarray(descStart, p));
    }
    if (p !== end) throw new Error("export section not read to its end");
    parts.push(Uint8Array.of(7, ...toLeb(body.length)), Uint8Array.from(body));
    pos = end;
    continue;
  }
  if (id !== 2) {
    parts.push(wasm.subarray(pos, end));
    pos = end;
    continue;
  }
  // The import section: count, then (module, name, kind, description) each.
  let p = start;
  let count;
  [count, p] = leb(wasm, p);
  const body = [...toLeb(count)];
  for (let i = 0; i < count; i++) {
    let len;
    [len, p] = leb(wasm, p);
    const moduleName = utf8.decode(wasm.subarray(p, p + len));
    p += len;
    if (webGlue && !moduleRenames.has(moduleName)) {
      moduleRenames.set(moduleName, String.fromCharCode(97 + moduleRenames.size));
    }
    const module = encode(webGlue ? moduleRenames.get(moduleName) : moduleName);
    [len, p] = leb(wasm, p);
    const name = utf8.decode(wasm.subarray(p, p + len));
    p += len;
    const descStart = p;
    const kind = wasm[p++];
    if (kind === 0) [, p] = leb(wasm, p); // function: type index
    else if (kind === 3) p += 2; // global: value type, mutability
    else if (kind === 1 || kind === 2) {
      // table (reference type first) or memory: limits = flags, min, max when flags & 1
      if (kind === 1) p++;
      const flags = wasm[p++];
      [, p] = leb(wasm, p);
      if (flags & 1) [, p] = leb(wasm, p);
    } else throw new Error(`import kind ${kind} not handled`);
    // Only the glue's own imports: a snippet's (`./snippets/…`) are its exports, named in its source.
    const own = moduleName === GLUE_MODULE;
    if (own && !renames.has(name)) renames.set(name, shortName(renames.size));
    const newName = encode(own ? renames.get(name) : name);
    body.push(...toLeb(module.length), ...module, ...toLeb(newName.length), ...newName);
    body.push(...wasm.subarray(descStart, p));
  }
  if (p !== end) throw new Error("import section not read to its end");
  parts.push(Uint8Array.of(2, ...toLeb(body.length)), Uint8Array.from(body));
  pos = end;
}

for (const [old, name] of moduleRenames) {
  let found = false;
  for (const file of Object.keys(glue)) {
    glue[file] = glue[file].replace(moduleKey(old), () => ((found = true), `"${name}":`));
  }
  if (!found) throw new Error(`module ${old} is not a key of the imports object in the glue of ${dir}`);
}
// `name` standing as a whole identifier (not part of a longer one).
const word = (name) => new RegExp(`(?<![\\w$])${name.replace(/\$/g, "\\$")}(?![\\w$])`, "g");
for (const name of renames.values()) {
  const user = Object.keys(glue).find((file) => word(name).test(glue[file]));
  if (user) throw new Error(`${user} already uses ${name}`);
}
for (const [old, name] of renames) {
  let found = false;
  for (const file of Object.keys(glue)) {
    glue[file] = glue[file].replace(word(old), () => ((found = true), name));
  }
  if (!found) throw new Error(`import ${old} not found in the glue of ${dir}`);
}
// Exports are read as `wasm.NAME` in the glue (both targets name the instance's exports `wasm`) and declared as
// `readonly NAME:` (web: `InitOutput`) or `export const NAME:` (`*_bg.wasm.d.ts`) in the typings.
const typings = Object.fromEntries(
  readdirSync(dir)
    .filter((f) => f.endsWith(".d.ts"))
    .map((f) => [f, readFileSync(path.join(dir, f), "utf8")]),
);
for (const [old, name] of exportRenames) {
  const escaped = old.replace(/\$/g, "\\$");
  for (const file of Object.keys(glue)) {
    const use = new RegExp(`(?<![\\w$])wasm\\.${escaped}(?![\\w$])`, "g");
    glue[file] = glue[file].replace(use, `wasm.${name}`);
  }
  for (const file of Object.keys(typings)) {
    const declared = new RegExp(`(readonly |export const )${escaped}:`, "g");
    typings[file] = typings[file].replace(declared, (_, prefix) => `${prefix}${name}:`);
  }
}
for (const file of Object.keys(glue)) {
  const left = /(?<![\w$])wasm\.(?!\$)[A-Za-z_]\w*/.exec(glue[file]);
  if (left) throw new Error(`${file}: ${left[0]} is not an export of ${wasmFile}`);
}
for (const [file, text] of Object.entries(typings)) writeFileSync(path.join(dir, file), text);
writeFileSync(path.join(dir, wasmFile), Buffer.concat(parts));
for (const [file, text] of Object.entries(glue)) writeFileSync(path.join(dir, file), text);
console.log(
  `${dir}: ${renames.size} imports, ${exportRenames.size} exports and ${moduleRenames.size} import modules renamed`,
);
