use tidings::{Context, HubError, hub};

#[tidings::client]
trait ChatClient {
    fn receive_message(user: &str, message: &str);
    fn user_count(count: u32);
}

struct Chat;

#[hub(client = ChatClient)]
impl Chat {
    async fn send_message(&self, cx: &Context, user: String, count: u32) -> Result<(), HubError> {
        cx.clients().others().receive_message(&user, count).await?;
        cx.clients().group("room").user_count(&user).await?;
        Ok(())
    }
}

fn main() {}
