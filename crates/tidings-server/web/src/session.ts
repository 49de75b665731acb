// Signing in with the server's demo token endpoint (`POST /demo/token`,
// served only when the server runs with `--demo-tokens`). The user name is
// kept per tab; a fresh token is fetched whenever a connection asks, so
// tokens never expire under the app and a restarted server (with a new
// random secret) is handled by reconnecting.

const STORAGE_KEY = "tidings-demo-user";

/** The server does not serve demo tokens. */
export class DemoTokensOff extends Error {
  constructor() {
    super("demo sign-in is off: start the server with --demo-tokens");
  }
}

interface TokenResponse {
  user: string;
  token: string;
  expiresIn: number;
}

async function fetchToken(user: string): Promise<TokenResponse> {
  const response = await fetch("/demo/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  if (response.status === 404 || response.status === 405) throw new DemoTokensOff();
  if (!response.ok) throw new Error((await response.text()) || `sign-in failed (${response.status})`);
  return (await response.json()) as TokenResponse;
}

export class Session {
  #user: string | null = sessionStorage.getItem(STORAGE_KEY);

  get user(): string | null {
    return this.#user;
  }

  /** Checks that a token can be had for `name`, then signs in as that user. */
  async signIn(name: string): Promise<void> {
    const { user } = await fetchToken(name);
    this.#user = user;
    sessionStorage.setItem(STORAGE_KEY, user);
  }

  signOut(): void {
    this.#user = null;
    sessionStorage.removeItem(STORAGE_KEY);
  }

  /** A fresh token for `user`. */
  async tokenFor(user: string): Promise<string> {
    return (await fetchToken(user)).token;
  }
}
