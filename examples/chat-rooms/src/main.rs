//! Chat rooms: each room is a SignalR group, and what the hub calls on its
//! clients is declared once as a typed contract (`#[tidings::client]`), so
//! a misspelled client method or a wrong argument is a compile error.
//!
//! Hub methods (`/hubs/rooms`): `JoinRoom(room, name)`, `LeaveRoom(room, name)`,
//! `SendToRoom(room, name, text)`. Clients receive `ReceiveMessage(room,
//! name, text)`, `UserJoined(room, name)` and `UserLeft(room, name)`.
//!
//! ```sh
//! cargo run -p example-chat-rooms   # LISTEN=127.0.0.1:0 picks a free port
//! ```
//!
//! Then, in Node (`npm install @microsoft/signalr`), in two terminals:
//!
//! ```js
//! import * as signalR from "@microsoft/signalr";
//! const c = new signalR.HubConnectionBuilder().withUrl("http://127.0.0.1:5000/hubs/rooms").build();
//! c.on("ReceiveMessage", (room, name, text) => console.log(`[${room}] ${name}: ${text}`));
//! await c.start();
//! await c.invoke("JoinRoom", "rust", "ann");
//! await c.invoke("SendToRoom", "rust", "ann", "hello, room");
//! ```

use tidings::{Context, HubEndpoint, HubError, hub};

/// The client methods this hub calls, named in PascalCase on the wire
/// (`receive_message` is `ReceiveMessage`).
#[tidings::client]
pub trait RoomClient {
    fn receive_message(room: &str, name: &str, text: &str);
    fn user_joined(room: &str, name: &str);
    fn user_left(room: &str, name: &str);
}

struct Rooms;

#[hub(client = RoomClient)]
impl Rooms {
    async fn join_room(&self, cx: &Context, room: String, name: String) -> Result<(), HubError> {
        cx.groups().add(cx.connection_id(), &room).await?;
        cx.clients().group(&room).user_joined(&room, &name).await?;
        Ok(())
    }

    async fn leave_room(&self, cx: &Context, room: String, name: String) -> Result<(), HubError> {
        cx.groups().remove(cx.connection_id(), &room).await?;
        // The leaver is no longer in the group, so it is told directly.
        cx.clients().group(&room).user_left(&room, &name).await?;
        cx.clients().caller().user_left(&room, &name).await?;
        Ok(())
    }

    async fn send_to_room(
        &self,
        cx: &Context,
        room: String,
        name: String,
        text: String,
    ) -> Result<(), HubError> {
        cx.clients()
            .group(&room)
            .receive_message(&room, &name, &text)
            .await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = axum::Router::new().nest("/hubs/rooms", HubEndpoint::new(Rooms).into_router());
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:5000".to_owned());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
