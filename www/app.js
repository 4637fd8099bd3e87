// The demo page: every control goes through the public API of the `@sockeye/client` npm package (built into
// ./pkg, found through the import map in index.html).
import init, { Client } from "@sockeye/client";

await init();

const $ = (id) => document.getElementById(id);
const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const client = new Client({
  url,
  reconnect: { enabled: true, maxAttempts: 10, baseDelayMs: 500, maxDelayMs: 8000, fullJitter: true },
  keepaliveIntervalMs: 15000,
  keepaliveTimeoutMs: 5000,
  requestTimeoutMs: 5000,
});
// For tests and the console.
window.sockeyeClient = client;

function item(list, text) {
  const li = document.createElement("li");
  li.textContent = text;
  list.prepend(li);
}

client.subscribeToTransitions(({ from, to, at, attempt, delayMs, reason }) => {
  $("status").textContent = to;
  $("status").dataset.status = to;
  const detail = [
    attempt && `attempt ${attempt}`,
    delayMs !== undefined && `in ${Math.round(delayMs)} ms`,
    reason && `reason ${reason}`,
  ].filter(Boolean);
  item($("transitions"), `${(at / 1000).toFixed(3)}s  ${from} → ${to}  ${detail.join(", ")}`);
});

client.subscribe("room-1", (data, meta) => {
  item($("events"), `#${meta.seq}  ${JSON.stringify(data)}`);
});

$("start").onclick = () => client.start();
$("close").onclick = () => client.close();
$("server-close").onclick = () =>
  client.request("close", { code: 1012, reason: "demo: server restart" }).catch(() => {});

$("echo-form").onsubmit = async (event) => {
  event.preventDefault();
  const slow = $("echo-slow").checked;
  const out = $("echo-result");
  out.textContent = "…";
  try {
    const reply = slow
      ? await client.request("sleep", { ms: 1500 }, { timeoutMs: 1000 })
      : await client.request("echo", { text: $("echo-text").value });
    out.textContent = JSON.stringify(reply);
  } catch (error) {
    out.textContent = `${error.name} (${error.code}): ${error.message}`;
  }
};

$("pub-form").onsubmit = (event) => {
  event.preventDefault();
  try {
    client.publish("room-1", { text: $("pub-text").value, at: new Date().toISOString() });
  } catch (error) {
    item($("events"), `${error.name} (${error.code}): ${error.message}`);
  }
};

client.start();
