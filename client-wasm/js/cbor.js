// JS values <-> CBOR (RFC 8949) for payloads, called from src/cbor.rs. Written in JS rather than walked from Rust
// through js-sys: every property read, type test and array push from wasm is a call across the boundary and an
// import in the package, so the Rust walker cost ~3 KB gzipped more than this file (minified) and ran slower.
//
// | JS | CBOR | back to JS |
// |---|---|---|
// | `undefined` as `data` | no `d` key | `undefined` |
// | `null`, `undefined` inside arrays | null, undefined | `null`, `undefined` |
// | `true`/`false` | simple values | booleans |
// | number: a safe integer (not `-0`) | integer | number |
// | other numbers (fractions, `-0`, `NaN`, ±`Infinity`, beyond 2^53) | shortest lossless float | number |
// | `BigInt` in -2^64..2^64 | integer | number when safe, else `BigInt` |
// | string | text | string |
// | `Uint8Array`, `ArrayBuffer`, any `ArrayBuffer` view | byte string | `Uint8Array` |
// | `Array`, `Set` | array | `Array` |
// | `Map` | map, keys encoded as values | plain object when every key is text, else `Map` |
// | other objects | map of own enumerable string keys; `undefined` values are left out | plain object |
//
// Functions, symbols, bigger `BigInt`s and nesting deeper than 128 levels (or cycles) throw a `TypeError`; a
// getter or proxy trap that throws makes the encoding fail with its error, as in `JSON.stringify`. A detached
// `ArrayBuffer` (or a view of one) encodes as empty bytes. Headers take their shortest form (RFC 8949 §4.2.1); a
// float is written in the shortest of half, single and double precision that gives back exactly the same bits.
//
// Decoding gets only payloads the core has checked (one well-formed item, at most 128 levels deep), keeps a tag's
// content and drops the tag, decodes unassigned simple values as `undefined` and replaces invalid UTF-8 (U+FFFD).
// Plain objects are built with `Object.fromEntries`, so a "__proto__" key is an own property, never the prototype.

const MAX_DEPTH = 128; // sockeye_core::codec::MAX_DEPTH
const BIG = 2n ** 64n;
const utf8 = new TextEncoder();
// `ignoreBOM`: a leading U+FEFF is text like any other, not a marker to drop.
const text = new TextDecoder("utf-8", { ignoreBOM: true });
const scratch = new DataView(new ArrayBuffer(8));

// The half-precision bits of `n` when they hold exactly `n`'s bits (NaNs: quiet ones whose payload fits), else -1.
function half(n) {
  scratch.setFloat64(0, n);
  const hi = scratch.getUint32(0);
  const sign = (hi >>> 16) & 0x8000;
  const exp = (hi >>> 20) & 0x7ff;
  const top = (hi >>> 10) & 0x3ff; // the 10 significand bits a half keeps
  const lost = hi & 0x3ff || scratch.getUint32(4);
  const e = exp - 1023;
  if (exp === 0) return (hi & 0xfffff) || lost ? -1 : sign; // ±0 (f64 subnormals are far below any half)
  if (exp === 0x7ff) return !lost && (!top || top & 0x200) ? sign | 0x7c00 | top : -1;
  if (e >= -14 && e <= 15) return lost ? -1 : sign | ((e + 15) << 10) | top;
  // Subnormal halves: m · 2^-24 with 0 < m < 1024.
  const m = Math.abs(n) * 16777216;
  return e >= -24 && e < -14 && Number.isInteger(m) ? sign | m : -1;
}

/** `data` as CBOR bytes; `undefined` (no payload) for `undefined`. Throws a `TypeError` for what it cannot encode. */
export function encode(data) {
  if (data === undefined) return undefined;
  let buf = new Uint8Array(64);
  let view = new DataView(buf.buffer);
  let len = 0;
  // Room for `n` more bytes; returns where they go. (Call it before reading `buf` or `view`: it may replace them.)
  const room = (n) => {
    if (len + n > buf.length) {
      const grown = new Uint8Array(Math.max(2 * buf.length, len + n));
      grown.set(buf);
      buf = grown;
      view = new DataView(buf.buffer);
    }
    const at = len;
    len += n;
    return at;
  };
  const byte = (b) => {
    const at = room(1);
    buf[at] = b;
  };
  // A big-endian number of `size` bytes (`set`: "Uint16", "Float32", ...), after `first`.
  const put = (first, size, set, n) => {
    const at = room(1 + size);
    buf[at] = first;
    view[`set${set}`](at + 1, n);
  };
  // An item header; `n` is a number or a BigInt below 2^64.
  const head = (major, n) => {
    major <<= 5;
    if (n < 24) byte(major | Number(n));
    else if (n < 0x100) put(major | 24, 1, "Uint8", Number(n));
    else if (n < 0x10000) put(major | 25, 2, "Uint16", Number(n));
    else if (n < 0x100000000) put(major | 26, 4, "Uint32", Number(n));
    else put(major | 27, 8, "BigUint64", BigInt(n));
  };
  const string = (major, bytes) => {
    head(major, bytes.length);
    const at = room(bytes.length);
    buf.set(bytes, at);
  };
  const number = (n) => {
    const h = Number.isSafeInteger(n) && !Object.is(n, -0) ? -2 : half(n);
    if (h === -2) n < 0 ? head(1, -1 - n) : head(0, n);
    else if (h >= 0) put(0xf9, 2, "Uint16", h);
    else if (Math.fround(n) === n) put(0xfa, 4, "Float32", n);
    else put(0xfb, 8, "Float64", n);
  };
  const items = (list, depth) => {
    head(4, list.length);
    for (let i = 0; i < list.length; i++) value(list[i], depth);
  };
  const value = (v, depth) => {
    switch (typeof v) {
      case "undefined":
        return byte(0xf7);
      case "boolean":
        return byte(v ? 0xf5 : 0xf4);
      case "number":
        return number(v);
      case "string":
        return string(3, utf8.encode(v));
      case "bigint":
        if (v >= -BIG && v < BIG) return v < 0n ? head(1, -1n - v) : head(0, v);
        throw new TypeError("data: BigInt outside -2^64..2^64");
      case "object": {
        if (v === null) return byte(0xf6);
        if (depth >= MAX_DEPTH) throw new TypeError("data: nested deeper than 128 levels (or cyclic)");
        depth++;
        // A detached buffer (or a view of one) has byteLength 0, and `new Uint8Array` would throw on it.
        if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) {
          const view = ArrayBuffer.isView(v);
          const length = v.byteLength;
          return string(2, length ? new Uint8Array(view ? v.buffer : v, view ? v.byteOffset : 0, length) : []);
        }
        if (Array.isArray(v)) return items(v, depth);
        if (v instanceof Set) return items([...v], depth);
        if (v instanceof Map) {
          head(5, v.size);
          return v.forEach((item, key) => {
            value(key, depth);
            value(item, depth);
          });
        }
        // Own enumerable string-keyed properties, like JSON; `undefined` values are left out.
        const entries = Object.entries(v).filter((entry) => entry[1] !== undefined);
        head(5, entries.length);
        for (const [key, item] of entries) string(3, utf8.encode(key)), value(item, depth);
        return;
      }
    }
    throw new TypeError(`data: cannot encode a ${typeof v}`);
  };
  value(data, 0);
  return buf.subarray(0, len);
}

// The number a half-precision float holds.
function fromHalf(h) {
  const exp = (h >> 10) & 31;
  const m = h & 0x3ff;
  const magnitude = exp === 31 ? (m ? NaN : Infinity) : exp ? (1024 + m) * 2 ** (exp - 25) : m * 2 ** -24;
  return h & 0x8000 ? -magnitude : magnitude;
}

/** The JS value of one CBOR item (a payload the core has checked). Byte strings are copied out of `bytes`. */
export function decode(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  // True (and the break consumed) at the end of an indefinite-length item.
  const stop = () => bytes[pos] === 0xff && ++pos > 0;
  const item = () => {
    const initial = bytes[pos++];
    const major = initial >> 5;
    const info = initial & 31;
    let n = info; // 31: an indefinite length
    if (info === 24) n = bytes[pos];
    else if (info === 25) n = view.getUint16(pos);
    else if (info === 26) n = major === 7 ? view.getFloat32(pos) : view.getUint32(pos);
    else if (info === 27) n = major === 7 ? view.getFloat64(pos) : view.getBigUint64(pos);
    if (info > 23 && info < 28) pos += 1 << (info - 24);
    if (typeof n === "bigint" && n <= Number.MAX_SAFE_INTEGER) n = Number(n);
    const more = (count) => (info === 31 ? !stop() : count < n);
    switch (major) {
      case 0:
        return n;
      case 1:
        return typeof n === "bigint" || n === Number.MAX_SAFE_INTEGER ? -1n - BigInt(n) : -1 - n;
      case 2:
      case 3: {
        let parts = [];
        if (info === 31) while (!stop()) parts.push(item());
        else parts = [major === 2 ? bytes.slice(pos, (pos += n)) : text.decode(bytes.subarray(pos, (pos += n)))];
        if (major === 3) return parts.join("");
        if (parts.length === 1) return parts[0];
        const joined = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
        parts.reduce((at, p) => (joined.set(p, at), at + p.length), 0);
        return joined;
      }
      case 4: {
        const list = [];
        while (more(list.length)) list.push(item());
        return list;
      }
      case 5: {
        const entries = [];
        let textKeys = true;
        while (more(entries.length)) {
          textKeys &&= bytes[pos] >> 5 === 3;
          entries.push([item(), item()]);
        }
        return textKeys ? Object.fromEntries(entries) : new Map(entries);
      }
      case 6:
        return item();
    }
    // Major 7: floats and simple values.
    if (info === 25) return fromHalf(n);
    if (info === 26 || info === 27) return n;
    return n === 20 ? false : n === 21 ? true : n === 22 ? null : undefined;
  };
  return item();
}
