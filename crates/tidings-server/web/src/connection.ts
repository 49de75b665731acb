// Building hub connections: the transport the page's query asks for
// (`?transport=longpolling`, `sse` or `websockets`; otherwise the client
// picks the best), the signed-in user's token, and automatic reconnection
// that keeps trying while a server restarts.

import {
  HubConnection,
  HubConnectionBuilder,
  HttpTransportType,
  LogLevel,
  type IRetryPolicy,
  type RetryContext,
} from "@microsoft/signalr";

/** The transport named by the page's `transport` query parameter. */
export function transportFromQuery(search: string = location.search): HttpTransportType | undefined {
  const name = new URLSearchParams(search).get("transport")?.toLowerCase();
  switch (name) {
    case "websockets":
      return HttpTransportType.WebSockets;
    case "sse":
    case "serversentevents":
      return HttpTransportType.ServerSentEvents;
    case "longpolling":
      return HttpTransportType.LongPolling;
    default:
      return undefined;
  }
}

/** Retries at once, then after 1 s, 2 s, then every 5 s, for ten minutes. */
export const retryPolicy: IRetryPolicy = {
  nextRetryDelayInMilliseconds(context: RetryContext): number | null {
    if (context.elapsedMilliseconds > 10 * 60 * 1000) return null;
    return [0, 1000, 2000][context.previousRetryCount] ?? 5000;
  },
};

export interface ConnectionOptions {
  transport?: HttpTransportType;
  /** A token whenever the client asks for one; without it, anonymous. */
  accessToken?: () => Promise<string>;
}

export function buildConnection(path: string, options: ConnectionOptions): HubConnection {
  const { accessToken } = options;
  return new HubConnectionBuilder()
    .withUrl(path, {
      transport: options.transport,
      accessTokenFactory: accessToken,
    })
    .withAutomaticReconnect(retryPolicy)
    .configureLogging(LogLevel.Warning)
    .build();
}

/**
 * Starts `connection`, trying again on the retry policy's schedule until it
 * starts or `cancelled()` says to stop; `onRetry` hears each failure.
 */
export async function startWithRetry(
  connection: HubConnection,
  cancelled: () => boolean,
  onRetry: (error: unknown) => void,
): Promise<boolean> {
  const started = Date.now();
  for (let attempt = 0; ; attempt++) {
    if (cancelled()) return false;
    try {
      await connection.start();
      return true;
    } catch (error) {
      onRetry(error);
      const delay = retryPolicy.nextRetryDelayInMilliseconds({
        previousRetryCount: attempt,
        elapsedMilliseconds: Date.now() - started,
        retryReason: error instanceof Error ? error : new Error(String(error)),
      });
      if (delay === null) return false;
      await new Promise((resolve) => setTimeout(resolve, Math.max(delay, 500)));
    }
  }
}
