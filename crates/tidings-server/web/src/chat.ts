// The chat panel: rooms joined and left, each with its messages, who is
// in it and who is typing. Rooms are remembered per tab and joined again
// after every (re)connection, since a new connection belongs to no group.

import { byId, clock, element } from "./dom";
import type { ChatConnection, RoomMessage, RoomUsers } from "./generated/chat";

const ROOMS_KEY = "tidings-demo-rooms";
const TYPING_SHOWN_MS = 3000;
const TYPING_SENT_EVERY_MS = 2000;
const MAX_MESSAGES = 200;

type Line = { kind: "message"; message: RoomMessage } | { kind: "event"; text: string };

interface Room {
  lines: Array<Line>;
  users: RoomUsers | null;
  typing: Map<string, number>;
  unread: number;
}

export class ChatPanel {
  #hub: ChatConnection | null = null;
  #rooms = new Map<string, Room>();
  #active: string | null = null;
  #lastTypingSent = 0;

  readonly #tabs = byId<HTMLUListElement>("room-tabs");
  readonly #messages = byId<HTMLOListElement>("messages");
  readonly #typing = byId("typing");
  readonly #users = byId<HTMLUListElement>("room-users");
  readonly #usersSummary = byId("room-users-summary");
  readonly #title = byId("room-title");
  readonly #messageForm = byId<HTMLFormElement>("message-form");
  readonly #messageInput = byId<HTMLInputElement>("message-input");
  readonly #joinForm = byId<HTMLFormElement>("join-form");
  readonly #joinInput = byId<HTMLInputElement>("join-input");
  readonly #error = byId("chat-error");

  constructor() {
    const saved = sessionStorage.getItem(ROOMS_KEY);
    const rooms: unknown = saved === null ? ["lobby"] : JSON.parse(saved);
    for (const room of Array.isArray(rooms) ? rooms : []) {
      if (typeof room === "string") this.#addRoom(room);
    }
    this.#active = this.#rooms.keys().next().value ?? null;

    this.#joinForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const room = this.#joinInput.value.trim();
      if (room === "") return;
      this.#joinInput.value = "";
      void this.join(room);
    });
    this.#messageForm.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.#send();
    });
    this.#messageInput.addEventListener("input", () => this.#typed());
    this.#render();
  }

  /** Uses a new connection (after signing in or out). */
  attach(hub: ChatConnection): void {
    this.#hub = hub;
    hub.on("receiveRoomMessage", (message) => {
      const room = this.#rooms.get(message.room);
      if (room === undefined) return;
      room.typing.delete(message.sender);
      this.#push(message.room, room, { kind: "message", message });
    });
    hub.on("roomUsers", (users) => this.#updateUsers(users));
    hub.on("roomTyping", ({ room: name, user }) => {
      const room = this.#rooms.get(name);
      if (room === undefined) return;
      room.typing.set(user, Date.now() + TYPING_SHOWN_MS);
      if (name === this.#active) this.#renderTyping();
      setTimeout(() => this.#active === name && this.#renderTyping(), TYPING_SHOWN_MS + 50);
    });
  }

  /** Joins every remembered room on the current connection. */
  async rejoin(): Promise<void> {
    await Promise.all([...this.#rooms.keys()].map((room) => this.#joinOnServer(room)));
  }

  async join(name: string): Promise<void> {
    this.#addRoom(name);
    this.#active = name;
    this.#save();
    this.#render();
    await this.#joinOnServer(name);
  }

  async leave(name: string): Promise<void> {
    this.#rooms.delete(name);
    if (this.#active === name) this.#active = this.#rooms.keys().next().value ?? null;
    this.#save();
    this.#render();
    await this.#call(() => this.#hub?.invoke.leaveRoom(name));
  }

  async #joinOnServer(name: string): Promise<void> {
    await this.#call(async () => {
      if (this.#hub === null) return;
      await this.#hub.invoke.joinRoom(name);
      this.#updateUsers(await this.#hub.invoke.getRoomUsers(name));
    });
  }

  async #send(): Promise<void> {
    const text = this.#messageInput.value.trim();
    const room = this.#active;
    if (text === "" || room === null || this.#hub === null) return;
    this.#messageInput.value = "";
    this.#lastTypingSent = 0;
    await this.#call(() => this.#hub?.invoke.sendToRoom(room, text));
  }

  #typed(): void {
    const room = this.#active;
    const now = Date.now();
    if (room === null || this.#hub === null || now - this.#lastTypingSent < TYPING_SENT_EVERY_MS) return;
    this.#lastTypingSent = now;
    void this.#call(() => this.#hub?.invoke.startTypingInRoom(room));
  }

  /** Runs a hub call; a failure is shown under the chat, not thrown. */
  async #call(action: () => Promise<unknown> | undefined): Promise<void> {
    try {
      await action();
      this.#error.textContent = "";
    } catch (error) {
      this.#error.textContent = error instanceof Error ? error.message : String(error);
    }
  }

  #updateUsers(users: RoomUsers): void {
    const room = this.#rooms.get(users.room);
    if (room === undefined) return;
    if (room.users !== null) {
      const before = new Set(room.users.users);
      const after = new Set(users.users);
      for (const user of after) if (!before.has(user)) this.#push(users.room, room, { kind: "event", text: `${user} joined` });
      for (const user of before) if (!after.has(user)) this.#push(users.room, room, { kind: "event", text: `${user} left` });
    }
    room.users = users;
    if (users.room === this.#active) this.#renderUsers();
  }

  #addRoom(name: string): void {
    if (!this.#rooms.has(name)) {
      this.#rooms.set(name, { lines: [], users: null, typing: new Map(), unread: 0 });
    }
  }

  #push(name: string, room: Room, line: Line): void {
    room.lines.push(line);
    if (room.lines.length > MAX_MESSAGES) room.lines.shift();
    if (name === this.#active) {
      this.#messages.append(this.#renderLine(line));
      this.#messages.scrollTop = this.#messages.scrollHeight;
      this.#renderTyping();
    } else {
      room.unread += 1;
      this.#renderTabs();
    }
  }

  #save(): void {
    sessionStorage.setItem(ROOMS_KEY, JSON.stringify([...this.#rooms.keys()]));
  }

  #render(): void {
    this.#renderTabs();
    const room = this.#active === null ? undefined : this.#rooms.get(this.#active);
    this.#title.textContent = this.#active === null ? "No room: join one" : `# ${this.#active}`;
    this.#messageInput.disabled = room === undefined;
    this.#messages.replaceChildren(...(room?.lines ?? []).map((line) => this.#renderLine(line)));
    this.#messages.scrollTop = this.#messages.scrollHeight;
    this.#renderUsers();
    this.#renderTyping();
  }

  #renderTabs(): void {
    const tabs = [...this.#rooms].map(([name, room]) => {
      const tab = element("li", name === this.#active ? "room-tab active" : "room-tab");
      tab.dataset.room = name;
      const open = element("button", "room-open", name);
      open.type = "button";
      open.addEventListener("click", () => {
        this.#active = name;
        room.unread = 0;
        this.#render();
      });
      tab.append(open);
      if (room.unread > 0) tab.append(element("span", "unread", String(room.unread)));
      const leave = element("button", "room-leave", "×");
      leave.type = "button";
      leave.title = `Leave ${name}`;
      leave.addEventListener("click", () => void this.leave(name));
      tab.append(leave);
      return tab;
    });
    this.#tabs.replaceChildren(...tabs);
  }

  #renderLine(line: Line): HTMLLIElement {
    if (line.kind === "event") return element("li", "event", line.text);
    const { message } = line;
    const item = element("li", "message");
    item.append(
      element("time", "time", clock(message.timestamp)),
      element("span", "sender", message.sender),
      element("span", "content", message.content),
    );
    return item;
  }

  #renderUsers(): void {
    const users = this.#active === null ? null : (this.#rooms.get(this.#active)?.users ?? null);
    this.#users.replaceChildren(...(users?.users ?? []).map((user) => element("li", "user", user)));
    if (users === null) {
      this.#usersSummary.textContent = "";
      return;
    }
    const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;
    this.#usersSummary.textContent = `${users.users.length} signed in · ${plural(users.connections, "connection")}`;
  }

  #renderTyping(): void {
    const room = this.#active === null ? undefined : this.#rooms.get(this.#active);
    const now = Date.now();
    const names = [...(room?.typing ?? [])].filter(([, until]) => until > now).map(([name]) => name);
    this.#typing.textContent =
      names.length === 0 ? "" : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
  }
}
