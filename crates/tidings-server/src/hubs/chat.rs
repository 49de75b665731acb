//! `/hubs/chat`: a chat with rooms, typing indicators, presence per room
//! and notifications to users, and its typed client contract
//! ([`ChatClient`]).

use std::collections::{BTreeSet, HashMap};

use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use tidings::{ConnectionError, Context, HubError, hub};
use ts_rs::TS;

/// The chat hub.
///
/// It remembers the rooms of each of its own connections: the lifetime
/// manager forgets a connection's groups before `on_disconnected` runs, and
/// the rooms must hear that a closed tab left them.
#[derive(Debug, Default)]
pub(crate) struct ChatHub {
    rooms: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl ChatHub {
    fn rooms(&self) -> MutexGuard<'_, HashMap<String, BTreeSet<String>>> {
        self.rooms.lock()
    }
}

/// A message posted to a room.
#[derive(Debug, Serialize, TS)]
pub(crate) struct RoomMessage {
    room: String,
    sender: String,
    content: String,
    /// RFC 3339, UTC, millisecond precision.
    timestamp: String,
}

/// Someone typing in a room (`RoomTyping`).
#[derive(Debug, Serialize, TS)]
pub(crate) struct RoomTyping {
    room: String,
    user: String,
}

/// A notification for one user (`Notification`).
#[derive(Debug, Serialize, TS)]
pub(crate) struct Notification {
    /// Display name of the sender.
    from: String,
    text: String,
    /// RFC 3339, UTC, millisecond precision.
    timestamp: String,
}

/// The people in a room (`RoomUsers` and `GetRoomUsers`).
#[derive(Debug, Serialize, TS)]
pub(crate) struct RoomUsers {
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

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Tells `room` that someone left and who is still there.
async fn announce_leave(cx: &Context, room: String) -> Result<(), HubError> {
    let room_clients = cx.clients().group(room.clone());
    room_clients.user_left(&display_name(cx)).await?;
    let users = room_users(cx, room).await?;
    room_clients.room_users(&users).await?;
    Ok(())
}

/// What the chat hub calls on its clients.
#[tidings::client]
pub trait ChatClient {
    /// A message for everyone.
    fn receive_message(user: &str, message: &str);
    /// Someone joined a room the client is in.
    fn user_joined(name: &str);
    /// Someone left a room the client is in.
    fn user_left(name: &str);
    /// Who is in a room, after someone joined or left it.
    fn room_users(users: &RoomUsers);
    /// A message posted to a room the client is in.
    fn receive_room_message(message: &RoomMessage);
    /// Someone else is typing.
    fn typing_indicator(name: &str, typing: bool);
    /// Someone else is typing in a room the client is in.
    fn room_typing(typing: &RoomTyping);
    /// A notification to the client's user.
    fn notification(notification: &Notification);
    /// An administrator deleted a message.
    fn message_deleted(message_id: &str);
    /// The client's own connection id, right after it connected.
    fn connected(connection_id: &str);
}

#[hub(client = ChatClient)]
impl ChatHub {
    /// Everyone receives `ReceiveMessage(user, message)`.
    async fn send_message(
        &self,
        cx: &Context,
        user: String,
        message: String,
    ) -> Result<(), HubError> {
        cx.clients().all().receive_message(&user, &message).await?;
        Ok(())
    }

    /// The caller joins `room`; the room receives `UserJoined(name)`, then
    /// `RoomUsers({room, users, connections})`.
    async fn join_room(&self, cx: &Context, room: String) -> Result<(), HubError> {
        cx.groups().add(cx.connection_id(), &room).await?;
        self.rooms()
            .entry(cx.connection_id().to_owned())
            .or_default()
            .insert(room.clone());
        let room_clients = cx.clients().group(room.clone());
        room_clients.user_joined(&display_name(cx)).await?;
        let users = room_users(cx, room).await?;
        room_clients.room_users(&users).await?;
        Ok(())
    }

    /// The caller leaves `room`; the room receives `UserLeft(name)`, then
    /// `RoomUsers({room, users, connections})`.
    async fn leave_room(&self, cx: &Context, room: String) -> Result<(), HubError> {
        cx.groups().remove(cx.connection_id(), &room).await?;
        if let Some(rooms) = self.rooms().get_mut(cx.connection_id()) {
            rooms.remove(&room);
        }
        announce_leave(cx, room).await
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
            timestamp: now(),
        };
        cx.clients()
            .group(room)
            .receive_room_message(&payload)
            .await?;
        Ok(())
    }

    /// Administrators only (`role`/`roles` claim `Admin`): everyone
    /// receives `MessageDeleted(messageId)`. Others get ASP.NET Core's
    /// "Failed to invoke 'DeleteMessage' because user is unauthorized".
    #[authorize(roles = "Admin")]
    async fn delete_message(&self, cx: &Context, message_id: String) -> Result<(), HubError> {
        cx.clients().all().message_deleted(&message_id).await?;
        Ok(())
    }

    /// Everyone else receives `TypingIndicator(name, true)`.
    async fn start_typing(&self, cx: &Context) -> Result<(), HubError> {
        cx.clients()
            .others()
            .typing_indicator(&display_name(cx), true)
            .await?;
        Ok(())
    }

    /// The other members of `room` receive `RoomTyping({room, user})`.
    async fn start_typing_in_room(&self, cx: &Context, room: String) -> Result<(), HubError> {
        let typing = RoomTyping {
            room: room.clone(),
            user: display_name(cx),
        };
        cx.clients()
            .others_in_group(room)
            .room_typing(&typing)
            .await?;
        Ok(())
    }

    /// Every connection of user `user` (each open tab, on every server)
    /// receives `Notification({from, text, timestamp})`.
    async fn notify_user(&self, cx: &Context, user: String, text: String) -> Result<(), HubError> {
        let notification = Notification {
            from: display_name(cx),
            text,
            timestamp: now(),
        };
        cx.clients().user(user).notification(&notification).await?;
        Ok(())
    }

    /// The rooms the connection was in hear `UserLeft(name)` and the new
    /// `RoomUsers`.
    #[on_disconnected]
    async fn disconnected(&self, cx: &Context, _error: Option<ConnectionError>) {
        let rooms = self.rooms().remove(cx.connection_id()).unwrap_or_default();
        for room in rooms {
            if let Err(error) = announce_leave(cx, room).await {
                tracing::debug!(%error, "cannot announce a departure");
            }
        }
    }

    /// The caller receives `Connected(connectionId)`.
    #[on_connected]
    async fn connected(&self, cx: &Context) -> Result<(), HubError> {
        cx.clients().caller().connected(cx.connection_id()).await?;
        Ok(())
    }
}
