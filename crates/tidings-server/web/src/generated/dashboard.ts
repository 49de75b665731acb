// Generated from the Rust hub `DashboardHub` by tidings. Do not edit.
// Regenerate with `tidings typescript --hub dashboard --out <this file>`.
import type { HubConnection } from "@microsoft/signalr";

/**
 * One `Metrics` sample.
 */
export type Metrics = { uptimeSeconds: number, 
/**
 * Connections of the chat, test and dashboard hubs (on every server
 * with the backplane).
 */
connections: number, 
/**
 * Connections open on this server, every hub and transport.
 */
activeConnections: number, 
/**
 * Hub messages received and sent per second since the last sample.
 */
messagesPerSecond: number, 
/**
 * 99th percentile of invocation latency since the last sample, in
 * milliseconds; `null` when nothing was invoked.
 */
p99LatencyMs: number | null, timestamp: string, };

/** The methods of `DashboardHub`, invoked: each waits for the method to complete and resolves with its result. */
export interface DashboardInvoke {
}

/** The same methods, sent: each resolves once the message is sent, without waiting for the method. */
export interface DashboardSend {
}

/** The streaming methods of `DashboardHub`. */
export interface DashboardStream {
}

/** The methods the hub invokes on a client; register handlers with `on`. */
export interface DashboardClient {
  /**
   * A metrics sample, every period.
   */
  metrics(sample: Metrics): void | Promise<void>;
}

/** The wire name of each method. */
export const dashboardServerMethods = {
} as const;

/** The wire name of each method. */
export const dashboardClientMethods = {
  metrics: "Metrics",
} as const;

/** A `HubConnection` to `DashboardHub` with typed methods. */
export interface DashboardConnection {
  readonly connection: HubConnection;
  readonly invoke: DashboardInvoke;
  readonly send: DashboardSend;
  readonly stream: DashboardStream;
  /** Registers a handler of a client method; returns the function that removes it. */
  on<K extends keyof DashboardClient>(method: K, handler: DashboardClient[K]): () => void;
  /** Removes one handler of a client method, or all of them. */
  off<K extends keyof DashboardClient>(method: K, handler?: DashboardClient[K]): void;
}

/** Wraps `connection` (built with `HubConnectionBuilder`) in typed methods. */
export function dashboardConnection(connection: HubConnection): DashboardConnection {
  type Handler = (...args: any[]) => any;
  return {
    connection,
    invoke: {
    },
    send: {
    },
    stream: {
    },
    on(method, handler) {
      const name = dashboardClientMethods[method];
      const callback = handler as Handler;
      connection.on(name, callback);
      return () => connection.off(name, callback);
    },
    off(method, handler) {
      const name = dashboardClientMethods[method];
      if (handler === undefined) {
        connection.off(name);
      } else {
        connection.off(name, handler as Handler);
      }
    },
  };
}
