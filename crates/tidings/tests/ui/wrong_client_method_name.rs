use tidings::{Context, HubError, hub};

#[tidings::client]
trait ChatClient {
    fn receive_message(user: &str, message: &str);
}

struct Chat;

#[hub(client = ChatClient)]
impl Chat {
    async fn send_message(&self, cx: &Context, user: String, message: String) -> Result<(), HubError> {
        cx.clients().all().recieve_message(&user, &message).await?;
        Ok(())
    }
}

fn main() {}
