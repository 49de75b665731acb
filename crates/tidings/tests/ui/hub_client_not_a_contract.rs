use tidings::hub;

trait NotAContract {
    fn receive_message(user: &str);
}

struct Chat;

#[hub(client = NotAContract)]
impl Chat {
    async fn ping(&self) {}
}

fn main() {}
