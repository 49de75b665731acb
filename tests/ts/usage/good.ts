// Uses the generated hub modules as an application would. Compiled with
// `tsc --strict`; the test suite then runs the emitted JavaScript against
// the server, so the wrappers' wire names are checked too.

import * as signalR from "@microsoft/signalr";
import { chatConnection, type ChatConnection, type RoomMessage, type RoomUsers } from "../generated/chat.js";
import { dashboardConnection, type Metrics } from "../generated/dashboard.js";
import { testConnection } from "../generated/test.js";

function hub(url: string): signalR.HubConnection {
  return new signalR.HubConnectionBuilder()
    .withUrl(url)
    .configureLogging(signalR.LogLevel.None)
    .build();
}

function first<T>(register: (resolve: (value: T) => void) => void, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${what} within 5 s`)), 5000);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

export interface ChatExchange {
  message: [string, string];
  roomMessage: RoomMessage;
  joined: string;
  users: RoomUsers;
  connectionId: string;
  handlerRemoved: boolean;
}

/** Two chat clients: a broadcast, a room, presence, and `on`/`off`. */
export async function chatExchange(server: string): Promise<ChatExchange> {
  const a: ChatConnection = chatConnection(hub(`${server}/hubs/chat`));
  const b = chatConnection(hub(`${server}/hubs/chat`));
  const connectionId = first<string>((resolve) => a.on("connected", (id) => resolve(id)), "Connected");
  try {
    await a.connection.start();
    await b.connection.start();
    await b.invoke.joinRoom("lobby");
    const joined = first<string>((resolve) => b.on("userJoined", resolve), "UserJoined");
    await a.invoke.joinRoom("lobby");
    const users: RoomUsers = await a.invoke.getRoomUsers("lobby");

    const message = first<[string, string]>(
      (resolve) => b.on("receiveMessage", (user, text) => resolve([user, text])),
      "ReceiveMessage",
    );
    await a.invoke.sendMessage("ann", "hello");

    const roomMessage = first<RoomMessage>((resolve) => b.on("receiveRoomMessage", resolve), "ReceiveRoomMessage");
    await a.send.sendToRoom("lobby", "in the room");

    // A removed handler is not called again.
    let calls = 0;
    const remove = b.on("receiveMessage", () => {
      calls += 1;
    });
    remove();
    const again = first<string>((resolve) => b.on("receiveMessage", (_user, text) => resolve(text)), "second message");
    await a.invoke.sendMessage("ann", "again");
    await again;

    return {
      message: await message,
      roomMessage: await roomMessage,
      joined: await joined,
      users,
      connectionId: await connectionId,
      handlerRemoved: calls === 0,
    };
  } finally {
    await a.connection.stop();
    await b.connection.stop();
  }
}

/** One dashboard sample, pushed by the server. */
export async function dashboardSample(server: string): Promise<Metrics> {
  const dashboard = dashboardConnection(hub(`${server}/hubs/dashboard`));
  const sample = first<Metrics>((resolve) => dashboard.on("metrics", resolve), "Metrics");
  await dashboard.connection.start();
  try {
    return await sample;
  } finally {
    await dashboard.connection.stop();
  }
}

export interface Streams {
  counted: number[];
  sum: number;
  joined: string;
  sum2: number;
}

/** Streams both ways through the typed wrappers of the interop hub. */
export async function streams(server: string): Promise<Streams> {
  const test = testConnection(hub(`${server}/hubs/test`));
  await test.connection.start();
  try {
    const counted = await new Promise<number[]>((resolve, reject) => {
      const items: number[] = [];
      test.stream.counter(3, 1).subscribe({
        next: (item: number) => items.push(item),
        complete: () => resolve(items),
        error: reject,
      });
    });

    const numbers = new signalR.Subject<number>();
    const total = test.invoke.sum(numbers);
    numbers.next(1);
    numbers.next(2.5);
    numbers.complete();

    const first = new signalR.Subject<string>();
    const second = new signalR.Subject<string>();
    const joined = test.invoke.concatStreams(first, "+", second);
    first.next("a");
    first.complete();
    second.next("b");
    second.complete();

    const sum2: number = await test.invoke.add(40, 2);
    return { counted, sum: await total, joined: await joined, sum2 };
  } finally {
    await test.connection.stop();
  }
}
