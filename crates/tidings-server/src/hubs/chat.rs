//! `/hubs/chat`: a chat with rooms and typing indicators.

use serde::Serialize;
use tidings::{Context, HubError, hub};

/// The chat hub.
#[derive(Debug, Default)]
pub struct ChatHub;

/// A message posted to a room.
#[derive(Debug, Serialize)]
pub struct RoomMessage {
    room: String,
    sender: String,
    content: String,
    /// RFC 3339, UTC, millisecond precision.
    timestamp: String,
}

/// The people in a room (`RoomUsers` and `GetRoomUsers`).
#[derive(Debug, Serialize)]
pub struct RoomUsers {
    room: String,
    /// User ids of the signed-in members, sorted, each once.
    users: Vec<String>,
    /// Connections in the room, anonymous ones included.
    connections: usize,
}

async fn room_users(cx: &Context, room: String) -> Result<RoomUsers, HubError> {
    let presence = cx.presence();
    let members = presence.group_members(&room).await?;
    let mut users: Vec<String> = members.iter().filter_map(|m| m.user_id.clone()).collect();
    users.sort_unstable();
    users.dedup();
    Ok(RoomUsers {
        room,
        users,
        connections: members.len(),
    })
}

/// The display name of the caller: the `name` claim, else "Anonymous".
fn display_name(cx: &Context) -> String {
    cx.user().claim("name").unwrap_or("Anonymous").to_owned()
}

#[hub]
impl ChatHub {
    /// Everyone receives `ReceiveMessage(user, message)`.
    async fn send_message(
        &self,
        cx: &Context,
        user: String,
        message: String,
    ) -> Result<(), HubError> {
        cx.clients()
            .all()
            .send("ReceiveMessage", (user, message))
            .await?;
        Ok(())
    }

    /// The caller joins `room`; the room receives `UserJoined(name)`, then
    /// `RoomUsers({room, users, connections})`.
    async fn join_room(&self, cx: &Context, room: String) -> Result<(), HubError> {
        cx.groups().add(cx.connection_id(), &room).await?;
        cx.clients()
            .group(room.clone())
            .send("UserJoined", (display_name(cx),))
            .await?;
        let users = room_users(cx, room.clone()).await?;
        cx.clients().group(room).send("RoomUsers", (users,)).await?;
        Ok(())
    }

    /// The caller leaves `room`; the room receives `UserLeft(name)`, then
    /// `RoomUsers({room, users, connections})`.
    async fn leave_room(&self, cx: &Context, room: String) -> Result<(), HubError> {
        cx.groups().remove(cx.connection_id(), &room).await?;
        cx.clients()
            .group(room.clone())
            .send("UserLeft", (display_name(cx),))
            .await?;
        let users = room_users(cx, room.clone()).await?;
        cx.clients().group(room).send("RoomUsers", (users,)).await?;
        Ok(())
    }

    /// Who is in `room`, on every server: `{room, users, connections}`
    /// (user ids of signed-in members, sorted; number of connections,
    /// anonymous ones included).
    async fn get_room_users(&self, cx: &Context, room: String) -> Result<RoomUsers, HubError> {
        room_users(cx, room).await
    }

    /// The room receives `ReceiveRoomMessage({room, sender, content, timestamp})`.
    async fn send_to_room(
        &self,
        cx: &Context,
        room: String,
        message: String,
    ) -> Result<(), HubError> {
        let payload = RoomMessage {
            room: room.clone(),
            sender: display_name(cx),
            content: message,
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        cx.clients()
            .group(room)
            .send("ReceiveRoomMessage", (payload,))
            .await?;
        Ok(())
    }

    /// Everyone else receives `TypingIndicator(name, true)`.
    async fn start_typing(&self, cx: &Context) -> Result<(), HubError> {
        cx.clients()
            .others()
            .send("TypingIndicator", (display_name(cx), true))
            .await?;
        Ok(())
    }

    /// The caller receives `Connected(connectionId)`.
    #[on_connected]
    async fn connected(&self, cx: &Context) -> Result<(), HubError> {
        cx.clients()
            .caller()
            .send("Connected", (cx.connection_id().to_owned(),))
            .await?;
        Ok(())
    }
}
