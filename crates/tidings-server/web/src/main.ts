// The demo app: one chat-hub connection (as the signed-in user, or
// anonymous) for the chat and the notifications, one dashboard-hub
// connection for the metrics, and the banner that tells when the chat
// connection is lost and back.

import type { HubConnection } from "@microsoft/signalr";
import { ChatPanel } from "./chat";
import { buildConnection, startWithRetry, transportFromQuery } from "./connection";
import { DashboardPanel } from "./dashboard";
import { byId } from "./dom";
import { chatConnection, type ChatConnection } from "./generated/chat";
import { dashboardConnection } from "./generated/dashboard";
import { NotificationsPanel } from "./notifications";
import { DemoTokensOff, Session } from "./session";

type State = "connecting" | "connected" | "reconnecting" | "reconnected" | "disconnected";

/** The connection state: a dot in the header, a banner while it matters. */
class Banner {
  readonly #banner = byId("banner");
  readonly #state = byId("connection-state");
  #hideTimer: number | undefined;

  show(state: State, detail = ""): void {
    const texts: Record<State, string> = {
      connecting: "Connecting…",
      connected: "Connected",
      reconnecting: "Connection lost. Reconnecting…",
      reconnected: "Reconnected.",
      disconnected: "Disconnected. Reload the page to try again.",
    };
    this.#state.dataset.state = state;
    this.#state.textContent = state === "reconnected" ? "connected" : state;
    this.#state.title = detail;
    window.clearTimeout(this.#hideTimer);
    this.#banner.dataset.state = state;
    this.#banner.textContent = texts[state];
    // "Connecting" on first load and "connected" need no banner; "reconnected" shows for a while.
    this.#banner.hidden = state === "connected" || state === "connecting";
    if (state === "reconnected") {
      this.#hideTimer = window.setTimeout(() => (this.#banner.hidden = true), 4000);
    }
  }
}

const transport = transportFromQuery();
const session = new Session();
const banner = new Banner();
const chat = new ChatPanel();
const dashboard = new DashboardPanel();
const notifications = new NotificationsPanel(session, () => void connectChat());
byId("transport").textContent = new URLSearchParams(location.search).get("transport") ?? "automatic";

let current: ChatConnection | null = null;

/** (Re)connects the chat hub as the current user, then joins the rooms again. */
async function connectChat(): Promise<void> {
  const previous = current;
  // A connection keeps the identity it started with: the server refuses
  // requests of another user on it, such as the Close message that an old
  // connection sends while it stops after signing in.
  const user = session.user;
  const accessToken = user === null ? undefined : () => tokenFor(user);
  const hub = chatConnection(buildConnection("/hubs/chat", { transport, accessToken }));
  current = hub;
  if (previous !== null) await previous.connection.stop();

  const mine = () => current === hub;
  chat.attach(hub);
  notifications.attach(hub);
  hub.connection.onreconnecting((error) => mine() && banner.show("reconnecting", error?.message));
  hub.connection.onreconnected(async () => {
    if (!mine()) return;
    await chat.rejoin();
    banner.show("reconnected");
  });
  hub.connection.onclose((error) => mine() && banner.show("disconnected", error?.message));

  banner.show("connecting");
  const started = await startWithRetry(hub.connection, () => !mine(), (error) => {
    if (mine()) banner.show("connecting", String(error));
  });
  if (!started) {
    if (mine()) banner.show("disconnected");
    return;
  }
  await chat.rejoin();
  if (mine()) {
    banner.show("connected");
    document.body.dataset.chat = "ready";
  }

  async function tokenFor(user: string): Promise<string> {
    try {
      return await session.tokenFor(user);
    } catch (error) {
      if (error instanceof DemoTokensOff && mine()) {
        // The server came back without --demo-tokens: go on anonymously
        // instead of retrying in vain.
        session.signOut();
        notifications.signedOut(error);
        void connectChat();
      }
      throw error;
    }
  }
}

async function connectDashboard(connection: HubConnection): Promise<void> {
  const state = byId("dashboard-state");
  const show = (text: string) => (state.textContent = text);
  connection.onreconnecting(() => show("reconnecting"));
  connection.onreconnected(() => show("live"));
  connection.onclose(() => show("disconnected"));
  if (await startWithRetry(connection, () => false, () => show("connecting"))) show("live");
}

const dashboardHub = dashboardConnection(buildConnection("/hubs/dashboard", { transport }));
dashboard.attach(dashboardHub);
void connectDashboard(dashboardHub.connection);
void notifications.restore().then(connectChat);
