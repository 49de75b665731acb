use serde::Serialize;
use tidings::{hub, typescript::TypeScriptModule};

#[derive(Serialize)]
struct Secret {
    code: u32,
}

struct Vault;

#[hub]
impl Vault {
    async fn reveal(&self) -> Secret {
        Secret { code: 7 }
    }
}

fn main() {
    let _ = TypeScriptModule::new::<Vault>();
}
