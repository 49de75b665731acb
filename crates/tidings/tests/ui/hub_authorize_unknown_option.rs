use tidings::hub;

struct Admin;

#[hub(authorize(group = "Admin"))]
impl Admin {
    async fn purge(&self) {}
}

fn main() {}
