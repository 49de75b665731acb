#[tidings::client]
trait ChatClient {
    fn receive_message(user: &str) {
        let _ = user;
    }
    fn send(text: &str);
}

fn main() {}
