use tidings::hub;

struct Admin;

#[hub]
impl Admin {
    // `roles`, not `role`: a misspelled requirement must not compile into
    // a method anyone may call.
    #[authorize(role = "Admin")]
    async fn purge(&self) {}
}

fn main() {}
