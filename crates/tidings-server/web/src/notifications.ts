// The notifications panel: signing in as a user, sending a notification to
// any user, and the notifications this user received (in every tab the
// user has open).

import { byId, clock, element } from "./dom";
import type { ChatConnection } from "./generated/chat";
import { DemoTokensOff, type Session } from "./session";

export class NotificationsPanel {
  #hub: ChatConnection | null = null;
  readonly #session: Session;
  readonly #onIdentityChange: () => void;

  readonly #signInForm = byId<HTMLFormElement>("signin-form");
  readonly #signInName = byId<HTMLInputElement>("signin-name");
  readonly #signedIn = byId("signed-in");
  readonly #signedInUser = byId("signed-in-user");
  readonly #signOut = byId<HTMLButtonElement>("signout");
  readonly #signInError = byId("signin-error");
  readonly #notifyForm = byId<HTMLFormElement>("notify-form");
  readonly #notifyUser = byId<HTMLInputElement>("notify-user");
  readonly #notifyText = byId<HTMLInputElement>("notify-text");
  readonly #notifyStatus = byId("notify-status");
  readonly #list = byId<HTMLOListElement>("notification-list");
  readonly #empty = byId("notification-empty");

  constructor(session: Session, onIdentityChange: () => void) {
    this.#session = session;
    this.#onIdentityChange = onIdentityChange;
    this.#signInForm.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.#signIn(this.#signInName.value);
    });
    this.#signOut.addEventListener("click", () => {
      this.#session.signOut();
      this.#render();
      this.#onIdentityChange();
    });
    this.#notifyForm.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.#notify();
    });
    this.#render();
  }

  attach(hub: ChatConnection): void {
    this.#hub = hub;
    hub.on("notification", ({ from, text, timestamp }) => {
      const item = element("li", "notification");
      item.append(
        element("time", "time", clock(timestamp)),
        element("span", "from", from),
        element("span", "text", text),
      );
      this.#list.prepend(item);
      this.#empty.hidden = true;
    });
  }

  /** Shows that the session ended, and why. */
  signedOut(reason: unknown): void {
    this.#showSignInError(reason);
    this.#render();
  }

  /** Signs in again as the remembered user; forgets the user if that fails. */
  async restore(): Promise<void> {
    const user = this.#session.user;
    if (user === null) return;
    try {
      await this.#session.signIn(user);
    } catch (error) {
      this.#session.signOut();
      this.#showSignInError(error);
    }
    this.#render();
  }

  async #signIn(name: string): Promise<void> {
    try {
      await this.#session.signIn(name);
      this.#signInError.textContent = "";
      this.#signInName.value = "";
    } catch (error) {
      this.#showSignInError(error);
      return;
    }
    this.#render();
    this.#onIdentityChange();
  }

  #showSignInError(error: unknown): void {
    this.#signInError.textContent = error instanceof Error ? error.message : String(error);
    this.#signInForm.classList.toggle("off", error instanceof DemoTokensOff);
  }

  async #notify(): Promise<void> {
    const user = this.#notifyUser.value.trim();
    const text = this.#notifyText.value.trim();
    if (user === "" || text === "" || this.#hub === null) return;
    try {
      await this.#hub.invoke.notifyUser(user, text);
      this.#notifyText.value = "";
      this.#notifyStatus.textContent = `Sent to ${user}.`;
    } catch (error) {
      this.#notifyStatus.textContent = error instanceof Error ? error.message : String(error);
    }
  }

  #render(): void {
    const user = this.#session.user;
    this.#signInForm.hidden = user !== null;
    this.#signedIn.hidden = user === null;
    this.#signedInUser.textContent = user ?? "";
  }
}
