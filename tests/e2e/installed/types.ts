// Type-checked (`tsc --strict`, no skipLibCheck) against the installed package's .d.ts files by package.test.mjs:
// what an application writes compiles, and what the types must refuse is refused (each `@ts-expect-error` fails
// the check if its line compiles).
import init, {
  Client,
  SockeyeError,
  TimeoutError,
  ServerError,
  type ClientOptions,
  type Status,
  type Transition,
} from "@sockeye/client";
import { Client as BundlerClient, type ClientOptions as BundlerOptions } from "@sockeye/client/bundler";

interface Echo {
  text: string;
}

export async function app(signal: AbortSignal): Promise<string> {
  await init();
  const options: ClientOptions = {
    url: (attempt: number) => `wss://example.com/ws?attempt=${attempt}`,
    getToken: async () => "token",
    reconnect: { maxAttempts: null, baseDelayMs: 500 },
    lifecycle: {
      onDisconnect: ({ code, reason, willReconnect }) => console.log(code.toFixed(), reason, willReconnect),
      onError: (error: ServerError) => console.log(error.code, error.details),
    },
    handlers: { ping: (data: unknown, { method, id }) => ({ data, method, id }) },
  };
  const client = new Client(options);
  const status: Status = client.status;
  const stop: () => void = client.subscribeToTransitions((t: Transition) => {
    const reason: string | undefined = t.reason;
    console.log(t.from, t.to, t.at.toFixed(), reason, status);
  });
  client.start();
  await client.waitForStatus("ready", { timeoutMs: 5000 });
  const unsubscribe = client.subscribe<Echo>("room-1", (data, meta) => console.log(data.text, meta.seq.toFixed()));
  client.publish("room-1", { text: "hi" });
  client.send("audit", new Uint8Array([1, 2]));
  try {
    const reply = await client.request<Echo>("echo", { text: "hi" }, { timeoutMs: 2000, signal });
    return reply.text;
  } catch (e) {
    if (e instanceof TimeoutError) {
      const code: "DEADLINE_EXCEEDED" = e.code;
      return code;
    }
    if (e instanceof SockeyeError) return e.code;
    throw e;
  } finally {
    unsubscribe();
    stop();
    await client.close();
    new BundlerClient({ url: "wss://example.com/ws" } satisfies BundlerOptions).free();
  }
}

export function refused(client: Client): void {
  // @ts-expect-error: not a status
  void client.waitForStatus("open");
  // @ts-expect-error: `url` is required
  new Client({});
  // @ts-expect-error: no such option
  new Client({ url: "wss://example.com/ws", reconect: true });
  // @ts-expect-error: a status is read-only
  client.status = "ready";
  // @ts-expect-error: the handler's meta has no such field
  client.subscribe("room-1", (_data, meta) => meta.offset);
  // @ts-expect-error: the bundler build has no init()
  import("@sockeye/client/bundler").then((m) => m.default());
}
