// How the browser tests run Debian's Chromium: one place for its path and flags.

/** Debian's Chromium, or $CHROMIUM. */
export const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** No sandbox (tests run as root in containers), no GPU, and nothing that talks to the network on its own. */
export const chromiumArgs = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
