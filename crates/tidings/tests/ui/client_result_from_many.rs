use tidings::{Context, HubError, hub};

#[tidings::client]
trait ChatClient {
    fn confirm(question: &str) -> bool;
}

struct Chat;

#[hub(client = ChatClient)]
impl Chat {
    async fn ask(&self, cx: &Context) -> Result<bool, HubError> {
        Ok(cx.clients().all().confirm("Sure?").await?)
    }
}

fn main() {}
