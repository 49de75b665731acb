use tidings::{CancellationToken, hub};

struct Jobs;

#[hub]
impl Jobs {
    // Only streaming methods have a cancellation to give.
    async fn run(&self, name: String, cancel: CancellationToken) -> String {
        let _ = cancel;
        name
    }
}

fn main() {}
