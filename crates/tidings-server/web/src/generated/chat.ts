// Generated from the Rust hub `ChatHub` by tidings. Do not edit.
// Regenerate with `tidings typescript --hub chat --out <this file>`.
import type { HubConnection } from "@microsoft/signalr";

/**
 * The people in a room (`RoomUsers` and `GetRoomUsers`).
 */
export type RoomUsers = { room: string, 
/**
 * User ids of the signed-in members, sorted, each once.
 */
users: Array<string>, 
/**
 * Connections in the room, anonymous ones included.
 */
connections: number, };

/**
 * A message posted to a room.
 */
export type RoomMessage = { room: string, sender: string, content: string, 
/**
 * RFC 3339, UTC, millisecond precision.
 */
timestamp: string, };

/**
 * Someone typing in a room (`RoomTyping`).
 */
export type RoomTyping = { room: string, user: string, };

/**
 * A notification for one user (`Notification`).
 */
export type Notification = { 
/**
 * Display name of the sender.
 */
from: string, text: string, 
/**
 * RFC 3339, UTC, millisecond precision.
 */
timestamp: string, };

/** The methods of `ChatHub`, invoked: each waits for the method to complete and resolves with its result. */
export interface ChatInvoke {
  /**
   * Everyone receives `ReceiveMessage(user, message)`.
   */
  sendMessage(user: string, message: string): Promise<void>;
  /**
   * The caller joins `room`; the room receives `UserJoined(name)`, then
   * `RoomUsers({room, users, connections})`.
   */
  joinRoom(room: string): Promise<void>;
  /**
   * The caller leaves `room`; the room receives `UserLeft(name)`, then
   * `RoomUsers({room, users, connections})`.
   */
  leaveRoom(room: string): Promise<void>;
  /**
   * Who is in `room`, on every server: `{room, users, connections}`
   * (user ids of signed-in members, sorted; number of connections,
   * anonymous ones included).
   */
  getRoomUsers(room: string): Promise<RoomUsers>;
  /**
   * The room receives `ReceiveRoomMessage({room, sender, content, timestamp})`.
   */
  sendToRoom(room: string, message: string): Promise<void>;
  /**
   * Administrators only (`role`/`roles` claim `Admin`): everyone
   * receives `MessageDeleted(messageId)`. Others get ASP.NET Core's
   * "Failed to invoke 'DeleteMessage' because user is unauthorized".
   */
  deleteMessage(messageId: string): Promise<void>;
  /**
   * Everyone else receives `TypingIndicator(name, true)`.
   */
  startTyping(): Promise<void>;
  /**
   * The other members of `room` receive `RoomTyping({room, user})`.
   */
  startTypingInRoom(room: string): Promise<void>;
  /**
   * Every connection of user `user` (each open tab, on every server)
   * receives `Notification({from, text, timestamp})`.
   */
  notifyUser(user: string, text: string): Promise<void>;
}

/** The same methods, sent: each resolves once the message is sent, without waiting for the method. */
export interface ChatSend {
  /**
   * Everyone receives `ReceiveMessage(user, message)`.
   */
  sendMessage(user: string, message: string): Promise<void>;
  /**
   * The caller joins `room`; the room receives `UserJoined(name)`, then
   * `RoomUsers({room, users, connections})`.
   */
  joinRoom(room: string): Promise<void>;
  /**
   * The caller leaves `room`; the room receives `UserLeft(name)`, then
   * `RoomUsers({room, users, connections})`.
   */
  leaveRoom(room: string): Promise<void>;
  /**
   * Who is in `room`, on every server: `{room, users, connections}`
   * (user ids of signed-in members, sorted; number of connections,
   * anonymous ones included).
   */
  getRoomUsers(room: string): Promise<void>;
  /**
   * The room receives `ReceiveRoomMessage({room, sender, content, timestamp})`.
   */
  sendToRoom(room: string, message: string): Promise<void>;
  /**
   * Administrators only (`role`/`roles` claim `Admin`): everyone
   * receives `MessageDeleted(messageId)`. Others get ASP.NET Core's
   * "Failed to invoke 'DeleteMessage' because user is unauthorized".
   */
  deleteMessage(messageId: string): Promise<void>;
  /**
   * Everyone else receives `TypingIndicator(name, true)`.
   */
  startTyping(): Promise<void>;
  /**
   * The other members of `room` receive `RoomTyping({room, user})`.
   */
  startTypingInRoom(room: string): Promise<void>;
  /**
   * Every connection of user `user` (each open tab, on every server)
   * receives `Notification({from, text, timestamp})`.
   */
  notifyUser(user: string, text: string): Promise<void>;
}

/** The streaming methods of `ChatHub`. */
export interface ChatStream {
}

/** The methods the hub invokes on a client; register handlers with `on`. */
export interface ChatClient {
  /**
   * A message for everyone.
   */
  receiveMessage(user: string, message: string): void | Promise<void>;
  /**
   * Someone joined a room the client is in.
   */
  userJoined(name: string): void | Promise<void>;
  /**
   * Someone left a room the client is in.
   */
  userLeft(name: string): void | Promise<void>;
  /**
   * Who is in a room, after someone joined or left it.
   */
  roomUsers(users: RoomUsers): void | Promise<void>;
  /**
   * A message posted to a room the client is in.
   */
  receiveRoomMessage(message: RoomMessage): void | Promise<void>;
  /**
   * Someone else is typing.
   */
  typingIndicator(name: string, typing: boolean): void | Promise<void>;
  /**
   * Someone else is typing in a room the client is in.
   */
  roomTyping(typing: RoomTyping): void | Promise<void>;
  /**
   * A notification to the client's user.
   */
  notification(notification: Notification): void | Promise<void>;
  /**
   * An administrator deleted a message.
   */
  messageDeleted(messageId: string): void | Promise<void>;
  /**
   * The client's own connection id, right after it connected.
   */
  connected(connectionId: string): void | Promise<void>;
}

/** The wire name of each method. */
export const chatServerMethods = {
  sendMessage: "SendMessage",
  joinRoom: "JoinRoom",
  leaveRoom: "LeaveRoom",
  getRoomUsers: "GetRoomUsers",
  sendToRoom: "SendToRoom",
  deleteMessage: "DeleteMessage",
  startTyping: "StartTyping",
  startTypingInRoom: "StartTypingInRoom",
  notifyUser: "NotifyUser",
} as const;

/** The wire name of each method. */
export const chatClientMethods = {
  receiveMessage: "ReceiveMessage",
  userJoined: "UserJoined",
  userLeft: "UserLeft",
  roomUsers: "RoomUsers",
  receiveRoomMessage: "ReceiveRoomMessage",
  typingIndicator: "TypingIndicator",
  roomTyping: "RoomTyping",
  notification: "Notification",
  messageDeleted: "MessageDeleted",
  connected: "Connected",
} as const;

/** A `HubConnection` to `ChatHub` with typed methods. */
export interface ChatConnection {
  readonly connection: HubConnection;
  readonly invoke: ChatInvoke;
  readonly send: ChatSend;
  readonly stream: ChatStream;
  /** Registers a handler of a client method; returns the function that removes it. */
  on<K extends keyof ChatClient>(method: K, handler: ChatClient[K]): () => void;
  /** Removes one handler of a client method, or all of them. */
  off<K extends keyof ChatClient>(method: K, handler?: ChatClient[K]): void;
}

/** Wraps `connection` (built with `HubConnectionBuilder`) in typed methods. */
export function chatConnection(connection: HubConnection): ChatConnection {
  type Handler = (...args: any[]) => any;
  return {
    connection,
    invoke: {
      sendMessage: (user: string, message: string) => connection.invoke<void>("SendMessage", user, message),
      joinRoom: (room: string) => connection.invoke<void>("JoinRoom", room),
      leaveRoom: (room: string) => connection.invoke<void>("LeaveRoom", room),
      getRoomUsers: (room: string) => connection.invoke<RoomUsers>("GetRoomUsers", room),
      sendToRoom: (room: string, message: string) => connection.invoke<void>("SendToRoom", room, message),
      deleteMessage: (messageId: string) => connection.invoke<void>("DeleteMessage", messageId),
      startTyping: () => connection.invoke<void>("StartTyping"),
      startTypingInRoom: (room: string) => connection.invoke<void>("StartTypingInRoom", room),
      notifyUser: (user: string, text: string) => connection.invoke<void>("NotifyUser", user, text),
    },
    send: {
      sendMessage: (user: string, message: string) => connection.send("SendMessage", user, message),
      joinRoom: (room: string) => connection.send("JoinRoom", room),
      leaveRoom: (room: string) => connection.send("LeaveRoom", room),
      getRoomUsers: (room: string) => connection.send("GetRoomUsers", room),
      sendToRoom: (room: string, message: string) => connection.send("SendToRoom", room, message),
      deleteMessage: (messageId: string) => connection.send("DeleteMessage", messageId),
      startTyping: () => connection.send("StartTyping"),
      startTypingInRoom: (room: string) => connection.send("StartTypingInRoom", room),
      notifyUser: (user: string, text: string) => connection.send("NotifyUser", user, text),
    },
    stream: {
    },
    on(method, handler) {
      const name = chatClientMethods[method];
      const callback = handler as Handler;
      connection.on(name, callback);
      return () => connection.off(name, callback);
    },
    off(method, handler) {
      const name = chatClientMethods[method];
      if (handler === undefined) {
        connection.off(name);
      } else {
        connection.off(name, handler as Handler);
      }
    },
  };
}
